"""Pretrained weights that a FLamby model downloads when it is built, found before it tries.

Fed-ISIC2019's Baseline calls `EfficientNet.from_pretrained(arch)` (efficientnet_pytorch), which
loads `<torch hub dir>/checkpoints/<file name of the weights' URL>` and downloads it when absent.
On a compute node without internet that download hangs on DNS or ends in a library traceback on
every rank. So the file is looked for first, and a missing one is a UserError naming the file, the
directory looked in and the command that fetches it on a node with internet.

`data_args.pretrained_weights_dir` is a TORCH_HOME: the weights are read from
`<dir>/hub/checkpoints/`; the run sets torch's hub directory to `<dir>/hub` before the model is
built. Without it, torch's own rule applies (TORCH_HOME, else $XDG_CACHE_HOME/torch, else
~/.cache/torch).
"""
from __future__ import annotations

import contextlib
import inspect
import os
import shlex
from dataclasses import dataclass
from typing import Callable, Optional
from urllib.parse import urlparse

from ..exit.errors import UserError


@dataclass(frozen=True)
class WeightsFile:
    """One weights file a model loads through torch hub's cache."""
    arch: str
    url: str
    fetch_python: str  # the Python statement that downloads it into the hub cache

    @property
    def file_name(self) -> str:
        return os.path.basename(urlparse(self.url).path)


def _efficientnet_weights(baseline) -> Optional[WeightsFile]:
    """The EfficientNet weights FLamby's Fed-ISIC2019 Baseline() loads: its default arch_name,
    the URL efficientnet_pytorch keeps for it (read from the library, not copied)."""
    parameters = inspect.signature(baseline).parameters
    pretrained = parameters.get("pretrained")
    arch = parameters.get("arch_name")
    if arch is None or pretrained is None or pretrained.default is not True:
        return None
    from efficientnet_pytorch.utils import url_map

    name = arch.default
    return WeightsFile(arch=name, url=url_map[name],
                      fetch_python=f'from efficientnet_pytorch import EfficientNet; '
                                   f'EfficientNet.from_pretrained("{name}")')


# FLamby datasets whose Baseline() downloads weights, and how to tell which file.
DOWNLOADING_BASELINES = {"fed_isic2019": _efficientnet_weights}


def weights_needed(dataset_name: str, baseline) -> Optional[WeightsFile]:
    finder = DOWNLOADING_BASELINES.get(dataset_name)
    return finder(baseline) if finder is not None else None


def torch_home(weights_dir: Optional[str]) -> str:
    """The TORCH_HOME a run uses: the configured directory, else torch's own choice."""
    if weights_dir is not None:
        return os.path.abspath(os.path.expanduser(weights_dir))
    import torch.hub

    return os.path.dirname(torch.hub.get_dir())  # get_dir() is <TORCH_HOME>/hub


def checkpoint_path(weights: WeightsFile, weights_dir: Optional[str]) -> str:
    return os.path.join(torch_home(weights_dir), "hub", "checkpoints", weights.file_name)


def fetch_command(weights: WeightsFile, home: str) -> str:
    return f"TORCH_HOME={shlex.quote(home)} python -c {shlex.quote(weights.fetch_python)}"


def check_weights(dataset_name: str, weights: WeightsFile, weights_dir: Optional[str]):
    """Raises a UserError when the weights file is not a readable file where it will be looked for."""
    path = checkpoint_path(weights, weights_dir)
    if os.path.isfile(path) and os.access(path, os.R_OK):
        return
    home = torch_home(weights_dir)
    looked_in = os.path.dirname(path)
    how = ("data_args.pretrained_weights_dir" if weights_dir is not None
           else "torch's cache: TORCH_HOME, else $XDG_CACHE_HOME/torch, else ~/.cache/torch")
    raise UserError(
        f"{dataset_name}'s model needs the pretrained {weights.arch} weights {weights.file_name}, "
        f"which are not in {looked_in} ({how}); compute nodes usually cannot download them",
        hint=f"on a machine with internet, fetch them into that directory:\n  {fetch_command(weights, home)}\n"
             f"(or copy {weights.file_name} from {weights.url} there); on a shared file system, "
             "point data_args.pretrained_weights_dir at that TORCH_HOME")


@contextlib.contextmanager
def hub_dir(weights_dir: Optional[str]):
    """torch hub's directory set to <weights_dir>/hub while the model is built, as TORCH_HOME would."""
    if weights_dir is None:
        yield
        return
    import torch.hub

    before = torch.hub.get_dir()
    torch.hub.set_dir(os.path.join(torch_home(weights_dir), "hub"))
    try:
        yield
    finally:
        torch.hub.set_dir(before)


def guarded_baseline(dataset_name: str, baseline: Callable, weights_dir: Optional[str]) -> Callable:
    """baseline, checked for its weights before every build (no download is ever attempted)."""
    weights = weights_needed(dataset_name, baseline)
    if weights is None:
        return baseline

    def build():
        check_weights(dataset_name, weights, weights_dir)
        with hub_dir(weights_dir):
            return baseline()

    return build
