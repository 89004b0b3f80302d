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
import shlex
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
WRITERS = ("fed_ixi", "fed_isic2019", "fed_camelyon16", "fed_kits19", "fed_lidc_idri")


def available():
    return [name for name in WRITERS if (HERE / "standin" / f"{name}.py").is_file()]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dataset", help="FLamby dataset name: " + ", ".join(available()))
    parser.add_argument("directory", type=Path, help="where to write it (created; must be empty or absent)")
    parser.add_argument("--seed", type=int, default=0, help="the stand-in data's seed (default 0)")
    args = parser.parse_args(argv)
    if args.dataset not in available():
        print(f"standin_data.py: no stand-in writer for {args.dataset!r}; one of: {', '.join(available())}",
              file=sys.stderr)
        return 2
    directory = args.directory.expanduser().resolve()
    if directory.exists() and any(directory.iterdir()):
        print(f"standin_data.py: {directory} is not empty; give a new or empty directory", file=sys.stderr)
        return 2
    directory.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(HERE))
    writer = importlib.import_module(f"standin.{args.dataset}")
    launcher_args = writer.write(directory, args.seed)
    print(" ".join(shlex.quote(a) for a in launcher_args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
