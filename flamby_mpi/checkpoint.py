"""Checkpoints on disk: every rank's state after a round, one consistent cut per round.

Layout, in `<output_dir>/checkpoints/round_<r>/` (r: training rounds complete):
- `rank_<k>.pt`: rank k's tensors (a nested dict of tensors and plain values), written with
  torch.save and read back with torch.load(weights_only=True), which unpickles nothing but
  tensors and plain containers;
- `rank_<k>.json`: rank k's other state (counters, random-number states, history) as JSON;
- `manifest.json`: written by rank 0 last, once every rank has confirmed its files (their
  sha256 travels in the round's replies): a round directory without it is not a checkpoint.
Every file is written by flamby_mpi.safe_files.write_atomic: a fresh temporary name, flushed to
disk and renamed, so a kill or a full disk during a write leaves the previous checkpoint as it was
(and no partial file). Directories are entered and pruned without following links. Each rank
prunes its own files.

A checkpoint is trusted only as far as it is checked: the manifest is JSON of a known shape
and format, every file's size and sha256 must match it before it is read, and nothing is
unpickled. Ranks may sit on hosts without a shared filesystem: each reads its own files, and
rank 0 alone reads the manifests (the resume negotiation is in flamby_mpi/resume.py).
"""
from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from . import safe_files

FORMAT = 1
MANIFEST = "manifest.json"
_ROUND_DIR = re.compile(r"^round_([0-9]{1,9})$")
# A rank's JSON state and a manifest stay far below this; a bigger file is not ours.
MAX_JSON_BYTES = 512 * 1024 * 1024

FileEntries = Dict[str, Dict[str, object]]  # file name -> {"sha256": hex, "bytes": int}


class CheckpointError(Exception):
    """A checkpoint that cannot be used; the message names the file and what is wrong."""


def checkpoints_dir(output_dir: Path) -> Path:
    return Path(output_dir) / "checkpoints"


def round_dir(output_dir: Path, round_idx: int) -> Path:
    return checkpoints_dir(output_dir) / f"round_{round_idx}"


def rank_file_names(rank: int) -> Tuple[str, str]:
    return f"rank_{rank}.pt", f"rank_{rank}.json"


def _in_round(round_idx: int, name: str) -> str:
    """A file of round_idx's cut, relative to the output directory (safe_files' paths)."""
    return f"checkpoints/round_{round_idx}/{name}"


def write_rank_state(output_dir: Path, round_idx: int, rank: int, tensors: dict, data: dict) -> FileEntries:
    """Saves one rank's state for the cut after round_idx rounds; returns its files' entries.
    Durable (fsynced before the rename) and hashed while torch.save streams into the file; a
    round directory that is a link raises safe_files.UnsafePathError, a full disk StorageError."""
    import torch

    pt_name, json_name = rank_file_names(rank)
    return {pt_name: safe_files.write_atomic(output_dir, _in_round(round_idx, pt_name),
                                             lambda handle: torch.save(tensors, handle), durable=True),
            json_name: safe_files.write_atomic(output_dir, _in_round(round_idx, json_name),
                                               json.dumps(data, sort_keys=True).encode(), durable=True)}


def write_manifest(output_dir: Path, round_idx: int, run_id: str, version: str, config: dict,
                   files: Dict[int, FileEntries]):
    """Makes round_idx a complete checkpoint: called by rank 0 once every rank's files are written."""
    manifest = {"format": FORMAT, "flamby_mpi": version, "round": round_idx, "run_id": run_id,
                "world_size": len(files), "config": config,
                "files": {str(rank): entries for rank, entries in sorted(files.items())}}
    safe_files.write_atomic(output_dir, _in_round(round_idx, MANIFEST),
                            (json.dumps(manifest, indent=1, sort_keys=True) + "\n").encode(), durable=True)


def rounds_on_disk(output_dir: Path) -> List[int]:
    """Round numbers of the round_<r> directories present, newest first. A round_<r> that is a
    link is not a round of this run: skipped, never read, written or pruned through."""
    found = [int(match.group(1)) for name, is_dir in safe_files.entries(output_dir, "checkpoints")
             for match in [_ROUND_DIR.match(name)] if match and is_dir]
    return sorted(found, reverse=True)


def _read_json(path: Path, what: str):
    try:
        size = path.stat().st_size
        if size > MAX_JSON_BYTES:
            raise CheckpointError(f"{path}: {size} bytes, more than a {what} can be")
        return json.loads(path.read_bytes())
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing") from None
    except (OSError, ValueError, RecursionError) as exc:
        raise CheckpointError(f"{path}: not a readable {what} ({type(exc).__name__}: {exc})") from None


def read_manifest(output_dir: Path, round_idx: int) -> dict:
    """round_idx's manifest, checked for shape; raises CheckpointError naming what is wrong."""
    path = round_dir(output_dir, round_idx) / MANIFEST
    manifest = _read_json(path, "checkpoint manifest")
    if not isinstance(manifest, dict):
        raise CheckpointError(f"{path}: not a checkpoint manifest")
    if type(manifest.get("format")) is not int or manifest["format"] != FORMAT:
        raise CheckpointError(f"{path}: checkpoint format {manifest.get('format')!r}, this version of "
                              f"flamby-mpi reads format {FORMAT}")
    files, config = manifest.get("files"), manifest.get("config")
    size = manifest.get("world_size")
    ok = (manifest.get("round") == round_idx and type(manifest.get("round")) is int
          and isinstance(config, dict) and isinstance(files, dict)
          and isinstance(manifest.get("flamby_mpi"), str) and isinstance(manifest.get("run_id"), str)
          and type(size) is int and 1 < size == len(files) and set(files) == {str(r) for r in range(size)})
    if ok:
        for rank, entries in files.items():
            ok = ok and isinstance(entries, dict) and set(entries) == set(rank_file_names(int(rank))) and all(
                isinstance(e, dict) and isinstance(e.get("sha256"), str) and isinstance(e.get("bytes"), int)
                for e in entries.values())
    if not ok:
        raise CheckpointError(f"{path}: not a checkpoint manifest of round {round_idx} (fields missing or "
                              "of the wrong type)")
    return manifest


def check_rank_files(output_dir: Path, round_idx: int, rank: int, entries: FileEntries):
    """Checks this rank's files of round_idx against the manifest's entries (size, sha256)."""
    directory = round_dir(output_dir, round_idx)
    for name in rank_file_names(rank):
        path, expected = directory / name, entries[name]
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            raise CheckpointError(f"{path}: missing (rank {rank}'s part of the checkpoint)") from None
        if size != expected["bytes"]:
            raise CheckpointError(f"{path}: {size} bytes, the manifest says {expected['bytes']} (truncated?)")
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 24), b""):
                digest.update(block)
        if digest.hexdigest() != expected["sha256"]:
            raise CheckpointError(f"{path}: its sha256 differs from the manifest's (corrupt)")


def read_rank_state(output_dir: Path, round_idx: int, rank: int) -> Tuple[dict, dict]:
    """(tensors, data) of one rank, already checked with check_rank_files."""
    import torch

    pt_name, json_name = rank_file_names(rank)
    directory = round_dir(output_dir, round_idx)
    try:
        tensors = torch.load(directory / pt_name, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: B902 - any unreadable file is a bad checkpoint
        raise CheckpointError(f"{directory / pt_name}: not readable as tensors ({type(exc).__name__}: "
                              f"{exc})") from None
    data = _read_json(directory / json_name, "checkpoint state")
    if not isinstance(tensors, dict) or not isinstance(data, dict):
        raise CheckpointError(f"{directory}: rank {rank}'s state has the wrong shape")
    return tensors, data


def remove_rank_files(output_dir: Path, round_idx: int, rank: int, manifest_too: bool = False):
    """Deletes this rank's files of one round (rank 0: the manifest first, so that the round
    stops counting as complete before any of its files goes), and the directory once empty.
    Never through a link: a round_<r> that links elsewhere is left alone, and so is what it links to."""
    names = ([MANIFEST] if manifest_too else []) + list(rank_file_names(rank))
    for name in names:
        safe_files.remove(output_dir, _in_round(round_idx, name))
    # Other ranks' files may still be there (then it stays), or it is gone already.
    safe_files.remove_empty_dir(output_dir, f"checkpoints/round_{round_idx}")


def remove_rank_checkpoints(output_dir: Path, rank: int, keep=()):
    """Deletes this rank's files of every round but those in keep: an earlier run's checkpoints
    when a run starts afresh, or, on resume, the cuts it does not continue from or keep."""
    for round_idx in rounds_on_disk(output_dir):
        if round_idx not in keep:
            remove_rank_files(output_dir, round_idx, rank, manifest_too=rank == 0)


def latest_recorded_run_id(output_dir: Path) -> Optional[str]:
    """The run id the newest readable manifest records (for --resume without --run_id)."""
    for round_idx in rounds_on_disk(output_dir):
        try:
            run_id = read_manifest(output_dir, round_idx).get("run_id")
        except CheckpointError:
            continue
        if isinstance(run_id, str):
            return run_id
    return None
