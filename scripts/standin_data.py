#!/usr/bin/env python
"""Stand-in data for a FLamby dataset, in FLamby's own on-disk layout.

    python scripts/standin_data.py DATASET DIR [--seed N]

writes a small, deterministic dataset into DIR in exactly the files and folders FLamby's
dataset class reads for DATASET (every centre present, shapes as FLamby's preprocessing
produces them, a few samples each), and prints as its last line the arguments to add to
`launch_client.py` so that a run uses it (`--set data_args.data_path=DIR ...`). FLamby's own
dataset class reads it: nothing of ours stands between. Where FLamby's model downloads
pretrained weights, stand-in weights of the right shapes are written where the run will look,
named as stand-ins. For smoke-testing a cluster before fetching the real data, and for tests.

One module per dataset in scripts/standin/ (`<dataset>.py`), each with
`write(directory: Path, seed: int) -> List[str]` returning the launcher arguments.
"""
from __future__ import annotations

import argparse
import importlib
import os
import shlex
import sys
from pathlib import Path
from typing import List, Optional

HERE = Path(__file__).resolve().parent
WRITERS = ("fed_ixi", "fed_isic2019", "fed_camelyon16", "fed_kits19", "fed_lidc_idri")
MAX_SEED = 2**63 - 1  # as common_args.random_seed: numpy and torch take it


class Refused(Exception):
    """A mistake of the user's, said in one line with exit 2."""


def available():
    return [name for name in WRITERS if (HERE / "standin" / f"{name}.py").is_file()]


def seed(text: str) -> int:
    """--seed: numpy refuses a negative seed with a traceback from deep inside a writer."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid int value: {text!r}") from None
    if not 0 <= value <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"{value} is outside 0 to 2**63 - 1")
    return value


def directory_problem(directory: Path) -> Optional[str]:
    """Why DIR cannot take the stand-in (it must be absent, or an empty directory), or None."""
    try:
        if not directory.exists():
            return None
        if not directory.is_dir():
            return f"{directory} is not a directory; give a new or empty directory"
        if any(directory.iterdir()):
            return f"{directory} is not empty; give a new or empty directory"
    except OSError as exc:
        return f"cannot read {directory}: {exc.strerror}"
    return None


def missing_directories(directory: Path) -> List[Path]:
    """directory and its ancestors that do not exist yet, deepest first: what mkdir will make."""
    missing = []
    for path in (directory, *directory.parents):
        if os.path.lexists(path):
            break
        missing.append(path)
    return missing


def remove_if_empty(made: List[Path]):
    """Removes the directories this script made (deepest first) while they are empty: a failed
    attempt leaves no empty directory behind, and nothing of the user's is ever removed."""
    for path in made:
        try:
            path.rmdir()
        except FileNotFoundError:  # never made: mkdir failed further up
            continue
        except OSError:  # not empty: neither are the ones above it
            return


def writer(dataset: str):
    """The module of scripts/standin/ that writes dataset."""
    sys.path.insert(0, str(HERE))
    return importlib.import_module(f"standin.{dataset}")


def write_standin(dataset: str, directory: Path, seed: int) -> List[str]:
    """Makes directory and writes dataset's stand-in there; returns the launcher arguments. Raises
    Refused for a directory that cannot take it."""
    problem = directory_problem(directory)
    if problem:
        raise Refused(problem)
    made = missing_directories(directory)
    try:
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise Refused(f"cannot make {directory}: {exc.strerror}") from None
        return writer(dataset).write(directory, seed)
    except BaseException:  # a writer's own exit 2 (FLamby missing...) included
        remove_if_empty(made)
        raise


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dataset", help="FLamby dataset name: " + ", ".join(available()))
    parser.add_argument("directory", type=Path, help="where to write it (created; must be empty or absent)")
    parser.add_argument("--seed", type=seed, default=0,
                        help="the stand-in data's seed, from 0 to 2**63 - 1 (default 0)")
    args = parser.parse_args(argv)
    if args.dataset not in available():
        print(f"standin_data.py: no stand-in writer for {args.dataset!r}; one of: {', '.join(available())}",
              file=sys.stderr)
        return 2
    try:
        launcher_args = write_standin(args.dataset, args.directory.expanduser().resolve(), args.seed)
    except Refused as refusal:
        print(f"standin_data.py: {refusal}", file=sys.stderr)
        return 2
    print(" ".join(shlex.quote(a) for a in launcher_args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
