"""Checkpoints on disk: every rank's state after a round, one consistent cut per round.

Layout, in `<output_dir>/checkpoints/round_<r>/` (r: training rounds complete):
- `rank_<k>.pt`: rank k's tensors (a nested dict of tensors and plain values), written with
  torch.save and read back with torch.load(weights_only=True), which unpickles nothing but
  tensors and plain containers;
- `rank_<k>.json`: rank k's other state (counters, random-number states, history) as JSON;
- `manifest.json`: written by rank 0 last, once every rank has confirmed its files (their
  sha256 travels in the round's replies): a round directory without it is not a checkpoint.
Every file is written by flamby_mpi.storage.safe_files (write_atomic, or Directory for a rank's two
files): a fresh temporary name, synced, renamed into place, then the directory synced once, before
the rank confirms them, so a kill or a full disk during a write leaves the previous checkpoint as it was (and no
partial file). A rank stages its part and writes it while the next round trains (staging.py).
Directories are entered and pruned without following links. Each rank prunes its own files.

A checkpoint is trusted only as far as it is checked: the manifest is JSON of a known shape
and format, every file's size and sha256 must match it before its content is used (the bytes
hashed are the bytes loaded: one open file), and nothing is unpickled. Every read is bounded
(safe_files.open_regular): a regular file reached without following a link, at most a cap read
from the open file, so a FIFO, a link to /dev/zero or a huge file is refused, not waited on.
Ranks may sit on hosts without a shared filesystem: each reads its own files, and rank 0 alone
reads the manifests (the resume negotiation is in flamby_mpi/checkpoints/resume.py).
"""
from __future__ import annotations

import hashlib
import io
import json
import re
import warnings
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from ..exit.errors import clip, shown
from ..storage import run_directory, safe_files, torch_files

FORMAT = 1
# The names of the layout, shared with the run directory's own view of it (what restart decides from).
MANIFEST, _ROUND_DIR = run_directory.MANIFEST, run_directory.ROUND_DIR
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
# Bounds of what a checkpoint read may take, whatever is planted in the directory:
# - a manifest holds the config (about 2 KB) and two entries (about 250 bytes) per rank: 3 KB for
#   5 ranks; 4 MiB is ten thousand ranks, and parsing 4 MiB of JSON costs tens of MB, not GB;
# - a rank's JSON state grows with the run (the server's history and per-round log, about 200 bytes
#   per client and round): 64 MiB is over 300 000 client-rounds, and still a bounded parse;
# - nesting: 4 levels today in both; the bounds leave room, and keep the parser off deep recursion;
# - a rank's .pt is read up to its size in the manifest (plus one byte, to see it is not longer).
MAX_MANIFEST_BYTES = 4 * 1024 * 1024
MAX_STATE_BYTES = 64 * 1024 * 1024
MAX_MANIFEST_DEPTH = 8
MAX_STATE_DEPTH = 16
_BLOCK = 1 << 24  # hashing a .pt: 16 MiB at a time, so a model of several GB is never held twice

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


def state_json(data: dict) -> bytes:
    """A rank's JSON state as written: the same bytes whether staged first or written at once."""
    return json.dumps(data, sort_keys=True).encode()


def write_rank_state(output_dir: Path, round_idx: int, rank: int, tensors: dict, data,
                     tensor_bytes: int = 0) -> FileEntries:
    """Saves one rank's state for the cut after round_idx rounds (data: the JSON state, or its
    bytes from state_json; tensor_bytes: what the tensors' storages hold, when known); returns its
    files' entries. Each file is hashed as it is written, synced and renamed into place, then the
    round directory is synced once; only then are the entries returned: a part the manifest names
    is on disk (a crash before leaves a round without its manifest, which is no checkpoint).
    Tensors of several MiB are streamed by torch.save into the file, past the page cache
    (safe_files' direct), never held twice in memory; smaller ones are serialised first and
    written at once (the same bytes, without some 70 small writes through the hash). A round
    directory that is a link raises safe_files.UnsafePathError, a full disk StorageError (the
    file's sync included: delayed allocation may find the disk full only then)."""

    pt_name, json_name = rank_file_names(rank)
    json_bytes = data if isinstance(data, bytes) else state_json(data)
    big = tensor_bytes >= safe_files.DIRECT_MIN_BYTES
    if big:
        def pt_content(handle):
            torch_files.save(tensors, handle, crc32=False)
    else:
        buffer = io.BytesIO()
        torch_files.save(tensors, buffer, crc32=False)
        pt_content = buffer.getbuffer()
    with safe_files.Directory(output_dir, f"checkpoints/round_{round_idx}", create=True) as directory:
        entries = {pt_name: directory.write_atomic(pt_name, pt_content, durable=True, direct=big),
                   json_name: directory.write_atomic(json_name, json_bytes, durable=True)}
        directory.sync()
    return entries


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


def _open_checked(output_dir: Path, round_idx: int, name: str, cap: int, what: str, too_big: str = ""):
    """name of round_idx's directory opened for reading: a regular file of at most cap bytes reached
    without following a link, the open itself never blocking (a FIFO); CheckpointError otherwise."""
    path = round_dir(output_dir, round_idx) / name
    try:
        return safe_files.open_regular(_in_round(round_idx, name), cap, root=output_dir)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing") from None
    except safe_files.UnsafePathError as error:  # a link, a FIFO, a device, a directory
        raise CheckpointError(f"{error.found} (a {what} is read only from a regular file, never through a link: "
                              "this is not one flamby-mpi wrote)") from None
    except ValueError:  # st_size of the open file over the cap
        raise CheckpointError(too_big or f"{path}: larger than the {cap} bytes a {what} can be") from None
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot be opened ({exc.strerror or type(exc).__name__})") from None


def _parse_json(path: Path, data: bytes, what: str, max_depth: int):
    try:
        return safe_files.load_json(data, max_depth=max_depth)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise CheckpointError(f"{path}: not a readable {what} ({type(exc).__name__}: "
                              f"{clip(str(exc))})") from None


def _read_json(output_dir: Path, round_idx: int, name: str, what: str, cap: int, max_depth: int):
    """A JSON file of round_idx's directory, read from the open file, at most cap bytes of it."""
    path = round_dir(output_dir, round_idx) / name
    with _open_checked(output_dir, round_idx, name, cap, what) as handle:
        try:
            data = handle.read(cap + 1)
        except OSError as exc:
            raise CheckpointError(f"{path}: cannot be read ({exc.strerror or type(exc).__name__})") from None
    if len(data) > cap:  # it grew after the open
        raise CheckpointError(f"{path}: larger than the {cap} bytes a {what} can be")
    return _parse_json(path, data, what, max_depth)


def _is_entry(entry) -> bool:
    return (isinstance(entry, dict) and type(entry.get("bytes")) is int and entry["bytes"] >= 0
            and isinstance(entry.get("sha256"), str) and _SHA256.match(entry["sha256"]) is not None)


def read_manifest(output_dir: Path, round_idx: int) -> dict:
    """round_idx's manifest, checked for shape; raises CheckpointError naming what is wrong."""
    path = round_dir(output_dir, round_idx) / MANIFEST
    manifest = _read_json(output_dir, round_idx, MANIFEST, "checkpoint manifest", MAX_MANIFEST_BYTES,
                          MAX_MANIFEST_DEPTH)
    if not isinstance(manifest, dict):
        raise CheckpointError(f"{path}: not a checkpoint manifest")
    if type(manifest.get("format")) is not int or manifest["format"] != FORMAT:
        raise CheckpointError(f"{path}: checkpoint format {shown(manifest.get('format'))}, this version of "
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
                _is_entry(e) for e in entries.values())
    if not ok:
        raise CheckpointError(f"{path}: not a checkpoint manifest of round {round_idx} (fields missing or "
                              "of the wrong type)")
    return manifest


class RankFiles:
    """One rank's two files of one cut, checked against the manifest and kept as checked: the .pt
    stays open (the tensors are loaded from the very file whose bytes were hashed, not from a name
    that could meanwhile point elsewhere) and the JSON is kept as the bytes that were hashed."""

    def __init__(self, round_idx: int, rank: int, tensors_path: Path, tensors_file, json_path: Path,
                 json_bytes: bytes):
        self.round_idx, self.rank = round_idx, rank
        self.tensors_path, self._tensors_file = tensors_path, tensors_file
        self.json_path, self._json_bytes = json_path, json_bytes

    def load(self) -> Tuple[dict, dict]:
        """(tensors, data): torch.load(weights_only=True) of the open .pt (nothing is unpickled but
        tensors and plain containers), and the JSON state."""
        import torch

        try:
            self._tensors_file.seek(0)
            with warnings.catch_warnings():  # torch's warnings about a file that is not ours are noise
                warnings.simplefilter("ignore")
                tensors = torch.load(self._tensors_file, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - a file not ours may fail torch.load any way: a bad checkpoint
            # Torch's own message is not shown: it advises retrying with weights_only=False, which
            # would run whatever a file that is not ours holds.
            raise CheckpointError(f"{self.tensors_path}: not readable as tensors: not a tensor checkpoint "
                                  f"written by flamby-mpi (torch could not read it safely: "
                                  f"{type(exc).__name__})") from None
        data = _parse_json(self.json_path, self._json_bytes, "checkpoint state", MAX_STATE_DEPTH)
        if not isinstance(tensors, dict) or not isinstance(data, dict):
            raise CheckpointError(f"{self.tensors_path.parent}: rank {self.rank}'s state has the wrong shape")
        return tensors, data

    def close(self):
        self._tensors_file.close()
        self._json_bytes = b""

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()


def _open_matching(output_dir: Path, round_idx: int, rank: int, name: str, entry: dict, keep_bytes: bool):
    """name opened and read once, at most its manifest size + 1 bytes, its size and sha256 compared
    with the manifest's entry. Returns (the open file, rewound; the bytes when keep_bytes)."""
    path = round_dir(output_dir, round_idx) / name
    expected = entry["bytes"]
    try:
        handle = _open_checked(output_dir, round_idx, name, expected, "checkpoint file",
                               too_big=f"{path}: larger than the {expected} bytes the manifest says (altered?)")
    except CheckpointError as error:
        raise CheckpointError(f"{error} (rank {rank}'s part of the checkpoint)") from None
    try:
        digest, size, kept = hashlib.sha256(), 0, []
        while size <= expected:
            block = handle.read(min(_BLOCK, expected + 1 - size))
            if not block:
                break
            digest.update(block)
            size += len(block)
            if keep_bytes:
                kept.append(block)
        if size != expected:
            raise CheckpointError(f"{path}: {size} bytes, the manifest says {expected} (truncated?)")
        if digest.hexdigest() != entry["sha256"]:
            raise CheckpointError(f"{path}: its sha256 differs from the manifest's (corrupt)")
        handle.seek(0)
        return handle, b"".join(kept)
    except OSError as exc:
        handle.close()
        raise CheckpointError(f"{path}: cannot be read ({exc.strerror or type(exc).__name__})") from None
    except BaseException:
        handle.close()
        raise


def check_rank_files(output_dir: Path, round_idx: int, rank: int, entries: FileEntries) -> RankFiles:
    """This rank's files of round_idx, checked against the manifest's entries (size, sha256) as
    they are read; the caller closes what it returns (RankFiles is a context manager)."""
    pt_name, json_name = rank_file_names(rank)
    if entries[json_name]["bytes"] > MAX_STATE_BYTES:
        raise CheckpointError(f"{round_dir(output_dir, round_idx) / json_name}: the manifest gives it "
                              f"{entries[json_name]['bytes']} bytes, more than a rank's state can be "
                              f"({MAX_STATE_BYTES})")
    tensors_file, _ = _open_matching(output_dir, round_idx, rank, pt_name, entries[pt_name], keep_bytes=False)
    try:
        json_file, json_bytes = _open_matching(output_dir, round_idx, rank, json_name, entries[json_name],
                                               keep_bytes=True)
        json_file.close()
    except BaseException:
        tensors_file.close()
        raise
    directory = round_dir(output_dir, round_idx)
    return RankFiles(round_idx, rank, directory / pt_name, tensors_file, directory / json_name, json_bytes)


def read_rank_state(output_dir: Path, round_idx: int, rank: int, entries: FileEntries) -> Tuple[dict, dict]:
    """(tensors, data) of one rank, checked against the manifest's entries in the same reading."""
    with check_rank_files(output_dir, round_idx, rank, entries) as files:
        return files.load()


def remove_rank_files(output_dir: Path, round_idx: int, rank: int, manifest_too: bool = False):
    """Deletes this rank's files of one round (rank 0: the manifest first, so that the round
    stops counting as complete before any of its files goes), and the directory once empty.
    Never through a link: a round_<r> that links elsewhere is left alone, and so is what it links to."""
    names = ([MANIFEST] if manifest_too else []) + list(rank_file_names(rank))
    # A write of these files killed midway (SIGKILL, a lost node) left its temporary file: only
    # safe_files.write_atomic makes such names, and this run holds the directory's lock.
    left = re.compile(r"^\.(%s)\.[0-9a-f]{16}\.tmp$" % "|".join(re.escape(name) for name in names))
    # Other ranks' files may still be there (then the directory stays), or it is gone already.
    safe_files.remove_files(output_dir, f"checkpoints/round_{round_idx}", names, also=left.match)


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
