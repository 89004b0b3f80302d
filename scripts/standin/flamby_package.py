"""Where the installed FLamby keeps the files it ships (metadata CSVs), found without importing it.

Stand-in writers read FLamby's own metadata to choose names FLamby will accept (its split and
centre columns decide where a sample lands); importing FLamby would pull torch and the dataset's
extras into a script that only writes files.
"""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path


def flamby_file(*parts: str) -> Path:
    """The path of a file inside the installed FLamby package; exits 2 when FLamby is absent."""
    spec = importlib.util.find_spec("flamby")
    if spec is None or not spec.submodule_search_locations:
        print("standin_data.py: FLamby is not installed; the stand-in data is written from FLamby's own "
              "metadata. Install it (git clone https://github.com/owkin/FLamby.git && "
              "pip install -e './FLamby[EXTRA]') and run again.", file=sys.stderr)
        raise SystemExit(2)
    path = Path(list(spec.submodule_search_locations)[0]).joinpath(*parts)
    if not path.is_file():
        print(f"standin_data.py: this FLamby has no {'/'.join(parts)} ({path}); "
              "the stand-in writer expects FLamby's layout of commit edacf54 or close to it.", file=sys.stderr)
        raise SystemExit(2)
    return path
