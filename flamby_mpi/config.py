"""The run configuration: FedML's YAML section layout, validated once into typed sections.

Precedence is defaults < YAML file (`--cf`) < `--set section.key=value` flags. All
problems (unknown sections or keys, wrong types, impossible values) are collected
and reported together, each with the valid choices. Checks that need the dataset
(number of centres, its default batch size...) happen in `flamby_mpi.plan`.
"""
from __future__ import annotations

import codecs
import dataclasses
import math
import os
import re
import stat
import sys
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import yaml

from .exit.errors import ConfigError, UserError, plain, shown
from .registry import STRATEGY_NAMES, hyperparameter_help

# Keys of FedML's and FLamby's example configs whose meaning this launcher cannot honour,
# with what to do instead. Unknown keys without a hint just list the valid ones.
FEDML_KEY_HINTS = {
    "epochs": "FLamby counts local work in optimizer steps: use train_args.num_updates",
    "scenario": "only the horizontal cross-silo scenario exists here; remove this key",
}

# Keys of FedML's and FLamby's example configs that have no effect here: accepted in any
# section, listed in one warning (`ignored_keys_warning`), and otherwise ignored. Client ids
# are the MPI ranks, FLamby's centres are their own partitions, data comes from
# data_args.data_path, logs go to <output_dir>/logs, and wandb is always off
# (tracking_args.enable_wandb accepts only false), so its wandb_* settings mean nothing.
IGNORED_KEYS = ("data_cache_dir", "partition_method", "partition_alpha", "preprocessed",
                "client_id_list", "is_mobile", "log_file_dir")
IGNORED_KEY_PREFIXES = ("wandb_",)


def is_ignored_key(key: str) -> bool:
    return key in IGNORED_KEYS or key.startswith(IGNORED_KEY_PREFIXES)


OPTIMIZER_CHOICES = ("sgd", "adam", "adamw", "adagrad", "rmsprop")
LOG_LEVELS = ("debug", "info", "warning", "error")
POOLED_TEST_MODES = ("predictions", "flamby", "off")


def _meta(choices=None, minimum=None, help="", normalize=None, check=None, maximum=None,
          above=False, below=False, why=""):
    """A field's checks. minimum/maximum bound a number, inclusive unless `above`/`below` (then the
    value must be strictly above the minimum / below the maximum); `why` says where the bound
    comes from, in the message and in --help."""
    return {"choices": choices, "minimum": minimum, "maximum": maximum, "above": above, "below": below,
            "why": why, "help": help, "normalize": normalize, "check": check}


# Upper bounds where a larger number passes every other check and then fails the run, or
# never starts it: the plan sums over every synthetic centre (10**9 of them hung it), each
# centre's samples are made in memory, torch refuses more threads than a C int, DataLoader
# starts each worker as a process, Python's timers overflow past threading.TIMEOUT_MAX (~9e9 s).
MAX_SYNTHETIC_CENTERS = 10_000  # one MPI process each
MAX_SYNTHETIC_SAMPLES = 10_000_000  # per centre, in memory
MAX_THREADS_OR_WORKERS = 1024
MAX_TIMEOUT_S = 1e9  # about 31 years
# Seeds go to torch.manual_seed (a 64-bit integer: it refuses 2**64) and numpy's SeedSequence, and
# into results.csv, which tools read as signed 64-bit integers: the tightest is [0, 2**63).
MAX_SEED = 2**63 - 1
# Counts (rounds, local steps, batch sizes, clients, evaluation frequency): a billion is beyond any
# run, and within what every consumer takes: itertools.islice (a DataLoader batch) refuses more
# than sys.maxsize, MPI ranks and torch's sizes are C ints in places. A bigger value is a typo.
MAX_COUNT = 1_000_000_000
# Every float hyperparameter ends up as a scalar in the models' arithmetic, which is float32
# (torch's default dtype, every FLamby baseline's): torch refuses `alpha=1e39` for a float32
# tensor ("value cannot be converted to type float without overflow"), so the value itself must be
# a float32 (what lr * grad then gives is training's business). torch.finfo(torch.float32).max and
# .tiny * 2**-23 (the smallest positive float32, below which a tau would be 0 there), written out
# so that checking a config does not import torch (tests/test_unit_config.py checks them).
FLOAT32_MAX = 3.4028234663852886e38
FLOAT32_SMALLEST = 1.401298464324817e-45
_IN_FLOAT32 = "finite in float32, the models' dtype"
_COUNT_WHY = "more than a billion is beyond any run"
_DECAY = "a decay: 1 would never forget"


# The longest name of one file the file system takes, in bytes (NAME_MAX: 255 on Linux's and
# macOS's file systems); the plan also asks a directory for its own (os.pathconf PC_NAME_MAX).
NAME_MAX = 255
# File names derived from a run id, besides `runs/<run_id>` itself: in the rendezvous directory
# `<run_id>.json`, `.secret`, `.connecting` (flamby_mpi/launch/rendezvous.py) and
# `<run_id>.alive.<rank>` (launch/liveness.py; a rank is an MPI C int: 10 digits at most). Each
# is written through a temporary name beside it, at longest safe_files' `.<name>.<16 hex>.tmp`
# (22 bytes more; rendezvous.py's `.<name>.<12 hex>` is shorter). tests/test_unit_config.py
# creates every one of them for the longest run id allowed.
RUN_ID_SUFFIXES = (".alive." + "9" * 10, ".connecting", ".secret", ".json", "")
TEMPORARY_NAME_EXTRA = len(".") + len(".") + 16 + len(".tmp")
RUN_ID_NAME_EXTRA = max(len(suffix) for suffix in RUN_ID_SUFFIXES) + TEMPORARY_NAME_EXTRA
MAX_RUN_ID_CHARACTERS = 200


def max_run_id_bytes(name_max: int = NAME_MAX) -> int:
    """The longest run id, in bytes of the file system's encoding, whose derived names all fit."""
    return name_max - RUN_ID_NAME_EXTRA


def run_id_bytes(run_id: str) -> Optional[int]:
    """The run id's length in the file system's encoding (None: it cannot be encoded at all)."""
    try:
        return len(os.fsencode(run_id))
    except UnicodeError:
        return None


def run_id_problem(run_id: str, name_max: int = NAME_MAX) -> Optional[str]:
    """File and directory names are derived from the run id: it must not reach outside them, and
    the longest of them must fit the file system's limit on a name, counted in bytes (an 'é' is
    two in UTF-8: 130 of them passed a limit in characters and failed with "File name too long")."""
    if not run_id or "/" in run_id or "\\" in run_id or ".." in run_id or run_id.startswith(".") \
            or not run_id.isprintable() or len(run_id) > MAX_RUN_ID_CHARACTERS:
        return (f"run id {shown(run_id)} cannot name files: it must be 1 to {MAX_RUN_ID_CHARACTERS} printable "
                "characters, without '/', '\\' or '..' and not starting with '.' (for example heart_fedavg_1)")
    size, limit = run_id_bytes(run_id), max_run_id_bytes(name_max)
    if size is None or size > limit:
        return (f"run id {shown(run_id)} cannot name files: it is "
                + ("not encodable" if size is None else f"{size} bytes") + f" in the file system's encoding "
                f"({sys.getfilesystemencoding()}), and the longest file named after it "
                f"(<run_id>.alive.<rank> under a temporary name) must fit the file system's {name_max}-byte "
                f"limit on a name: at most {limit} bytes (letters such as 'é' take 2 bytes in UTF-8)")
    return None


def expand_dir(path: str) -> Path:
    """A directory the config names (common_args.output_dir, comm_args.rendezvous_dir): `~` is the
    home directory, as for comm_args.secret_file (`~/x` was a directory named `~` in the working
    directory). The config keeps the text as written: ranks compare it, and their homes may differ."""
    return Path(os.path.expanduser(path))


def path_problem(path: str) -> Optional[str]:
    """A path the run will open or create later: a NUL in it would fail there, with a traceback."""
    if "\0" in path:
        return "a path cannot contain a NUL character"
    return None


def _pooled_test_mode(value):
    # Booleans stay accepted: true is the original meaning (predictions), false turns it off.
    if value is True:
        return "predictions"
    if value is False:
        return "off"
    return value


@dataclass
class CommonArgs:
    training_type: str = field(default="cross_silo", metadata=_meta(
        choices=("cross_silo",), help="the only training type (FLamby's example has simulation)"))
    random_seed: int = field(default=0, metadata=_meta(
        minimum=0, maximum=MAX_SEED, why="a signed 64-bit integer, as torch and numpy take seeds",
        help="seeds the initial global model (rank 0) and each client's data order and local "
             "randomness (from seed and FLamby centre index)"))
    run_id: Optional[str] = field(default=None, metadata=_meta(
        help="--run_id overrides; default: a timestamp and a random suffix (20261206-001500-3fa2)",
        check=run_id_problem))
    output_dir: Optional[str] = field(default=None, metadata=_meta(
        help="default: runs/<run_id>; ~ is your home directory; refused if it is a file or you cannot create it",
        check=path_problem))
    using_mlops: bool = field(default=False, metadata=_meta(choices=(False,),
                                                           help="FedML's cloud is never contacted"))
    checkpoint_every: int = field(default=1, metadata=_meta(
        minimum=0, maximum=1_000_000, help="every rank saves its state in <output_dir>/checkpoints every this "
                                           "many rounds, so that --resume can continue the run; 0: never "
                                           "(preemption still saves one)"))
    keep_checkpoints: int = field(default=2, metadata=_meta(
        minimum=1, maximum=1_000_000, help="complete checkpoints kept; older ones are deleted"))
    checkpoint_staging_mb: int = field(default=2048, metadata=_meta(
        minimum=0, maximum=1_000_000, help="a client copies its part of a checkpoint into memory of its own "
                                           "(at most this many MiB) and writes it while the next round trains "
                                           "(rank 0 writes its own from its model, which does not change "
                                           "meanwhile); a part bigger than this is written before the rank "
                                           "goes on, as the round ends (0: always)"))
    preemption_grace_s: float = field(default=30.0, metadata=_meta(
        minimum=1.0, maximum=MAX_TIMEOUT_S, help="on SIGTERM or SIGINT the ranks stop at the next round boundary "
                                                 "and save a checkpoint; if that takes longer than this, they "
                                                 "exit at once and the last complete checkpoint is kept"))


@dataclass
class DataArgs:
    dataset: str = field(default="synthetic", metadata=_meta(
        help="FLamby name (fed_heart_disease, Fed-Heart-Disease...), synthetic, or the name of "
             "an importable module with FLamby's dataset interface, dotted or not (my_silos, "
             "mypkg.silos)"))
    data_path: Optional[str] = field(default=None, metadata=_meta(help="passed to FLamby's dataset class",
                                                                  check=path_problem))
    debug: bool = field(default=False, metadata=_meta(help="FLamby's debug subset, where supported"))
    pretrained_weights_dir: Optional[str] = field(default=None, metadata=_meta(
        help="a TORCH_HOME holding the pretrained weights a FLamby model loads when built (Fed-ISIC2019's "
             "EfficientNet: <dir>/hub/checkpoints/efficientnet-b0-355c32eb.pth), for compute nodes without "
             "internet; default: torch's cache (TORCH_HOME, else ~/.cache/torch); a missing file is "
             "refused before training with the command that fetches it", check=path_problem))
    synthetic_num_centers: int = field(default=4, metadata=_meta(
        minimum=1, maximum=MAX_SYNTHETIC_CENTERS, help="centres of the synthetic dataset"))
    synthetic_samples_per_center: int = field(default=200, metadata=_meta(
        minimum=8, maximum=MAX_SYNTHETIC_SAMPLES, help="base size of a synthetic centre (sizes vary by centre)"))
    num_workers: int = field(default=0, metadata=_meta(
        minimum=0, maximum=MAX_THREADS_OR_WORKERS,
        help="DataLoader worker processes per loader of a rank (0: the rank loads its data itself); "
             "started by a fork server, never forked from the MPI rank; same model as 0 unless the "
             "dataset draws random augmentations (docs/running.md#dataloader-workers)"))
    centers: Optional[List[int]] = field(default=None, metadata=_meta(
        minimum=0, maximum=MAX_COUNT - 1, why="FLamby's centre indices, each below the dataset's NUM_CLIENTS",
        help="FLamby centre indices to train, e.g. [0, 2]; rank k trains the k-th listed centre, so mpirun -np "
             "is their number + 1, and results name FLamby's indices (client_test_2); the pooled test "
             "covers only these centres; default: all centres"))


@dataclass
class ModelArgs:
    model: str = field(default="baseline", metadata=_meta(choices=("baseline",),
                                                         help="the dataset's Baseline model"))


@dataclass
class TrainArgs:
    federated_optimizer: str = field(default="FedAvg", metadata=_meta(
        choices=STRATEGY_NAMES, help="the strategy, by FLamby's name"))
    client_num_in_total: Optional[int] = field(default=None, metadata=_meta(
        minimum=1, maximum=MAX_COUNT, why=_COUNT_WHY, help="if given, must equal the dataset's number of centres"))
    client_num_per_round: Optional[int] = field(default=None, metadata=_meta(
        minimum=1, maximum=MAX_COUNT, why=_COUNT_WHY, help="centres sampled per round (seeded); default: all"))
    comm_round: Optional[int] = field(default=None, metadata=_meta(
        minimum=1, maximum=MAX_COUNT, why=_COUNT_WHY, help="default: the dataset's get_nb_max_rounds(num_updates)"))
    num_updates: int = field(default=100, metadata=_meta(minimum=1, maximum=MAX_COUNT, why=_COUNT_WHY,
                                                         help="local optimizer steps per round"))
    batch_size: Optional[int] = field(default=None, metadata=_meta(minimum=1, maximum=MAX_COUNT, why=_COUNT_WHY,
                                                                   help="default: dataset's BATCH_SIZE"))
    learning_rate: Optional[float] = field(default=None, metadata=_meta(
        minimum=0.0, maximum=FLOAT32_MAX, why=_IN_FLOAT32, help="default: dataset's LR"))
    client_optimizer: Optional[str] = field(default=None, metadata=_meta(
        help=f"one of {', '.join(OPTIMIZER_CHOICES)} or a dotted class such as torch.optim.SGD; "
             "default: the dataset's Optimizer"))
    weight_decay: Optional[float] = field(default=None, metadata=_meta(
        minimum=0.0, maximum=FLOAT32_MAX, why=_IN_FLOAT32,
        help="passed to the client optimizer (weight_decay=); default: none is passed, so the optimizer's own "
             "default applies"))
    # Strategy hyperparameters, with FLamby's names (flamby/config_<dataset>.json); which strategy
    # uses each and its default come from flamby_mpi.registry, in the help as everywhere else.
    mu: Optional[float] = field(default=None, metadata=_meta(
        minimum=0.0, maximum=FLOAT32_MAX, why=_IN_FLOAT32,
        help=hyperparameter_help("mu", "proximal term weight")))
    server_learning_rate: Optional[float] = field(default=None, metadata=_meta(
        minimum=0.0, above=True, maximum=FLOAT32_MAX, why=_IN_FLOAT32,
        help=hyperparameter_help("server_learning_rate", "the server's step size")))
    beta1: Optional[float] = field(default=None, metadata=_meta(
        minimum=0.0, maximum=1.0, below=True, why=_DECAY,
        help=hyperparameter_help("beta1", "first-moment decay")))
    beta2: Optional[float] = field(default=None, metadata=_meta(
        minimum=0.0, maximum=1.0, below=True, why=_DECAY,
        help=hyperparameter_help("beta2", "second-moment decay")))
    tau: Optional[float] = field(default=None, metadata=_meta(
        minimum=FLOAT32_SMALLEST, maximum=FLOAT32_MAX, why="> 0 in float32, the models' dtype",
        help=hyperparameter_help("tau", "adaptivity (added to the square root of v)")))
    deterministic_cycle: Optional[bool] = field(default=None, metadata=_meta(
        help=hyperparameter_help("deterministic_cycle",
                                 "centres in order 0..N-1 instead of a seeded random order per cycle")))
    pass_model_on: Optional[bool] = field(default=None, metadata=_meta(
        help=hyperparameter_help("pass_model_on", "each centre starts from the previous centre's model; "
                                 "false reproduces FLamby's cyclic.py, where every centre trains its own "
                                 "copy and centre 0's is evaluated")))
    num_fine_tuning_steps: Optional[int] = field(default=None, metadata=_meta(
        minimum=0, maximum=MAX_COUNT, why=_COUNT_WHY, help=hyperparameter_help("num_fine_tuning_steps",
                                            "local steps on the final model before evaluation")))
    # Differential privacy as FLamby offers it (opacus, an optional install): all three or none.
    dp_target_epsilon: Optional[float] = field(default=None, metadata=_meta(
        minimum=0.0, above=True, maximum=FLOAT32_MAX, why=_IN_FLOAT32,
        help="differential privacy (needs opacus): target epsilon"))
    dp_target_delta: Optional[float] = field(default=None, metadata=_meta(
        minimum=0.0, above=True, maximum=1.0, below=True, why="a probability",
        help="differential privacy: target delta"))
    dp_max_grad_norm: Optional[float] = field(default=None, metadata=_meta(
        minimum=0.0, above=True, maximum=FLOAT32_MAX, why=_IN_FLOAT32,
        help="differential privacy: per-sample gradient clipping norm"))


@dataclass
class ValidationArgs:
    frequency_of_the_test: int = field(default=5, metadata=_meta(
        minimum=1, maximum=MAX_COUNT, why=_COUNT_WHY,
        help="clients evaluate the global model every this many rounds, and after the last one"))
    pooled_test: str = field(default="predictions", metadata=_meta(
        choices=POOLED_TEST_MODES, normalize=_pooled_test_mode,
        help="how the Pooled Test metric is computed: predictions (clients send test predictions and "
             "labels to the server), flamby (the server evaluates on FLamby's pooled test set, reading "
             "the data), off; true/false mean predictions/off"))
    test_batch_size: Optional[int] = field(default=None, metadata=_meta(
        minimum=1, maximum=MAX_COUNT, why=_COUNT_WHY, help="evaluation batch size; default: the training batch size"))


@dataclass
class DeviceArgs:
    worker_num: Optional[int] = field(default=None, metadata=_meta(
        minimum=1, maximum=MAX_COUNT, why=_COUNT_WHY,
        help="number of clients; if given, must equal the dataset's number of centres"))
    using_gpu: bool = field(default=False, metadata=_meta(
        help="clients train on GPUs: round-robin over the GPUs visible on their host by local rank, "
             "or as gpu_mapping_file says; the server stays on CPU; CPU with one warning when no GPU "
             "is visible"))
    cpu_threads: Optional[int] = field(default=None, metadata=_meta(
        minimum=1, maximum=MAX_THREADS_OR_WORKERS, help="torch threads per rank; default: cores / ranks"))
    gpu_mapping_file: Optional[str] = field(default=None, metadata=_meta(
        help="YAML file as FedML's gpu_mapping.yaml: <key>: {<host>: [processes on GPU 0, on GPU 1, "
             "...]}, counting every process on the host (server included) in local-rank order; "
             "host \"*\" matches any other host; default: round-robin", check=path_problem))
    gpu_mapping_key: str = field(default="mapping_default", metadata=_meta(
        help="which mapping of gpu_mapping_file to use"))
    memory_check: bool = field(default=True, metadata=_meta(
        help="before any data is loaded, refuse (exit 2, every rank) a job whose ranks on a host, or "
             "on a GPU, would not fit in its available memory, by the estimate `python -m flamby_mpi "
             "check` recorded (else a built-in figure for FLamby's datasets); false: run anyway"))
    memory_estimates_file: Optional[str] = field(default=None, metadata=_meta(
        help="the JSON file where `python -m flamby_mpi check` records its memory estimates and the "
             "run reads them; default: $XDG_CACHE_HOME/flamby-mpi/memory_estimates.json "
             "(~/.cache/... without XDG_CACHE_HOME); ~ is your home directory", check=path_problem))


@dataclass
class CommArgs:
    backend: str = field(default="MPI", metadata=_meta(
        choices=("MPI", "inprocess"),
        help="inprocess: the same server and client code in one process, no MPI (debugging, reference)"))
    round_timeout_s: float = field(default=1800.0, metadata=_meta(
        minimum=1.0, maximum=MAX_TIMEOUT_S, help="a rank that hears nothing for this long ends the job"))
    join_timeout_s: float = field(default=300.0, metadata=_meta(
        minimum=1.0, maximum=MAX_TIMEOUT_S, help="ranks started one per terminal must all join within this time"))
    rendezvous_dir: Optional[str] = field(default=None, metadata=_meta(
        help="where a separately started server publishes how to reach it (any shared filesystem); "
             "created private (0700); default: <output_dir>/rendezvous; ~ is your home directory",
        check=path_problem))
    secret_file: Optional[str] = field(default=None, metadata=_meta(
        help="separately started ranks prove they hold the secret in this file (yours, mode 0600; the "
             "server creates it if missing), for a rendezvous directory shared with others; default: a "
             "new secret per run in the rendezvous directory; the FLAMBY_MPI_SECRET environment variable "
             "wins over both", check=path_problem))


@dataclass
class TrackingArgs:
    log_level: str = field(default="warning", metadata=_meta(
        choices=LOG_LEVELS, help="level of FedML's own log records"))
    enable_wandb: bool = field(default=False, metadata=_meta(choices=(False,), help="wandb is never started"))
    tensorboard: bool = field(default=True, metadata=_meta(
        help="rank 0 writes per-round scalars (loss, times, bytes, metrics) to <output_dir>/tensorboard"))


@dataclass
class RunConfig:
    common_args: CommonArgs = field(default_factory=CommonArgs)
    data_args: DataArgs = field(default_factory=DataArgs)
    model_args: ModelArgs = field(default_factory=ModelArgs)
    train_args: TrainArgs = field(default_factory=TrainArgs)
    validation_args: ValidationArgs = field(default_factory=ValidationArgs)
    device_args: DeviceArgs = field(default_factory=DeviceArgs)
    comm_args: CommArgs = field(default_factory=CommArgs)
    tracking_args: TrackingArgs = field(default_factory=TrackingArgs)
    # "section.key" of the IGNORED_KEYS the file and --set gave, in their order (set by
    # build_config). Not a field: it is no part of the resolved config (config.yaml, equality).
    ignored_keys = ()

    def to_dict(self) -> Dict[str, Dict[str, Any]]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


SECTIONS: Dict[str, type] = {f.name: f.type for f in dataclasses.fields(RunConfig)}
_SECTION_TYPES = typing.get_type_hints(RunConfig)


def _describe(tp) -> str:
    args = typing.get_args(tp)
    if typing.get_origin(tp) is typing.Union:
        inner = [a for a in args if a is not type(None)]
        return f"{_describe(inner[0])} or null"
    if typing.get_origin(tp) is list:
        return f"a list of {_describe(args[0]).removeprefix('an ').removeprefix('a ')}s"
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}[tp]


def _coerce(value: Any, tp) -> Tuple[bool, Any]:
    """Returns (ok, converted value) for one YAML value against a field type."""
    if typing.get_origin(tp) is typing.Union:
        if value is None:
            return True, None
        tp = [a for a in typing.get_args(tp) if a is not type(None)][0]
    if tp is bool:
        return isinstance(value, bool), value
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as a string
            try:
                return True, float(value)  # 1e400 is inf: refused by _check_field
            except ValueError:
                return False, value
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False, value
        try:
            return True, float(value)
        except OverflowError:  # an integer beyond any float (400 digits)
            return False, value
    if tp is str:
        return isinstance(value, str), value
    if typing.get_origin(tp) is list:  # every item of the item type, or the list is refused whole
        if not isinstance(value, list):
            return False, value
        items = [_coerce(item, typing.get_args(tp)[0]) for item in value]
        return all(ok for ok, _ in items), [item for _, item in items]
    raise TypeError(f"unsupported config field type {tp}")  # a bug in this module


def _number(x) -> str:
    """A bound as a user would type it: 1 rather than 1.0, every digit of 3.4028234663852886e+38."""
    if isinstance(x, float) and x.is_integer() and abs(x) < 1e16:
        return str(int(x))
    return repr(x)


def range_text(metadata) -> str:
    """The allowed range of a field, e.g. `[0, 1)` or `(0, 3.4028234663852886e+38]`: a square
    bracket includes its bound, a round one excludes it. docs/configuration.md's tables show it too."""
    low, high = metadata.get("minimum"), metadata.get("maximum")
    return ("(" if metadata.get("above") else "[") + ("-inf" if low is None else _number(low)) + ", " \
        + ("inf" if high is None else _number(high)) + (")" if metadata.get("below") or high is None else "]")


def bounds_text(metadata) -> str:
    """The range with where it comes from, e.g. `[0, 1) (a decay: 1 would never forget)`: in every
    message and in --help."""
    why = metadata.get("why")
    return f"{range_text(metadata)} ({why})" if why else range_text(metadata)


def in_bounds(metadata, value) -> bool:
    low, high = metadata.get("minimum"), metadata.get("maximum")
    if low is not None and (value <= low if metadata.get("above") else value < low):
        return False
    return high is None or not (value >= high if metadata.get("below") else value > high)


def _check_field(where: str, f: dataclasses.Field, tp, value: Any, problems: List[str]):
    normalize = f.metadata.get("normalize")
    if normalize is not None:
        value = normalize(value)
    ok, value = _coerce(value, tp)
    if not ok:
        problems.append(f"{where}: expected {_describe(tp)}, got {shown(value)}")
        return None, False
    if isinstance(value, float) and not math.isfinite(value):  # .nan, .inf, 1e400
        problems.append(f"{where}: must be a finite number, got {shown(value)}")
        return None, False
    choices = f.metadata.get("choices")
    if choices is not None and value not in choices:
        listed = ", ".join(yaml.safe_dump(c).strip().removesuffix("...").strip() for c in choices)
        problems.append(f"{where}: {shown(value)} is not supported; valid choices: {listed}")
        return None, False
    if isinstance(value, list):  # a list's bounds hold for each of its items
        outside = [item for item in value if not in_bounds(f.metadata, item)]
        if outside:
            problems.append(f"{where}: each item must be in {bounds_text(f.metadata)}, got "
                            f"{', '.join(shown(item) for item in outside)}")
            return None, False
    elif value is not None and not in_bounds(f.metadata, value):
        problems.append(f"{where}: must be in {bounds_text(f.metadata)}, got {shown(value)}")
        return None, False
    check = f.metadata.get("check")
    problem = check(value) if check is not None and value is not None else None
    if problem:
        problems.append(f"{where}: {problem}")
        return None, False
    return value, True


class _ConfigLoader(yaml.SafeLoader):
    """yaml.safe_load's loader (no python/... tags), where a value that cannot be built
    (`!!int three`, `!!bool maybe`, `!!timestamp 2026-13-45`) is a YAML error at its line, and so is
    a key given twice in one mapping (PyYAML keeps the last one silently: a section written twice
    would lose the first one's keys)."""

    def construct_mapping(self, node, deep=False):
        if not isinstance(node, yaml.MappingNode):  # `!!set [a]`: PyYAML says what it expected
            return super().construct_mapping(node, deep=deep)
        first: Dict[Any, Any] = {}
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                continue  # `<<: *defaults` may be overridden by the keys beside it
            key = self.construct_object(key_node)
            try:
                earlier = first.setdefault(key, key_node)
            except TypeError:  # unhashable: PyYAML says so itself
                continue
            if earlier is not key_node:
                raise yaml.constructor.ConstructorError(
                    None, None, f"the key {shown(key)} is given twice (first at line "
                                f"{earlier.start_mark.line + 1})", key_node.start_mark)
        return super().construct_mapping(node, deep=deep)

    def construct_object(self, node, deep=False):
        try:
            return super().construct_object(node, deep=deep)
        except (ValueError, TypeError, KeyError, AttributeError, OverflowError):
            tag = node.tag.replace("tag:yaml.org,2002:", "!!")
            digits = len(node.value.strip("+-")) if isinstance(node.value, str) else 0
            problem = (f"an integer of {digits} digits, more than Python reads (4300) or any setting needs"
                       if tag == "!!int" and node.value.strip("+-").isdigit() and digits > 4300
                       else f"{shown(node.value)} is not a valid {tag} value")
            raise yaml.constructor.ConstructorError(None, None, problem, node.start_mark) from None


# What YAML does not allow in a document, as PyYAML's reader (yaml.reader.Reader.NON_PRINTABLE).
_NOT_IN_YAML = re.compile("[^\x09\x0A\x0D\x20-\x7E\x85\xA0-\uD7FF\uE000-\uFFFD\U00010000-\U0010FFFF]")


def _load_yaml(text: str) -> Any:
    """The YAML document in text; every problem with it is a yaml.YAMLError, in one line."""
    bad = _NOT_IN_YAML.search(text)
    if bad:  # PyYAML says where only as an offset
        line = text.count("\n", 0, bad.start())
        column = bad.start() - (text.rfind("\n", 0, bad.start()) + 1)
        raise yaml.YAMLError(f"character {shown(bad.group())} (U+{ord(bad.group()):04X}) is not allowed "
                             f"in YAML, at line {line + 1}, column {column + 1}")
    try:
        return yaml.load(text, Loader=_ConfigLoader)  # a SafeLoader: no python/... tags
    except RecursionError:  # PyYAML builds nested collections recursively
        raise yaml.YAMLError("it is nested too deeply") from None
    except yaml.MarkedYAMLError as exc:
        raise yaml.YAMLError(_yaml_problem(exc)) from None


def _yaml_problem(exc: yaml.MarkedYAMLError) -> str:
    """PyYAML's error in one line: what it found, and where (its own text quotes the line and draws
    a caret under it, on several lines)."""
    problem, context = exc.problem or exc.context or "invalid YAML", exc.context if exc.problem else None
    if "could not determine a constructor for the tag" in problem:
        tag = problem.rpartition(" tag ")[2].replace("tag:yaml.org,2002:", "!!")
        problem = f"the tag {tag} is not allowed (a config holds plain YAML values, without tags)"
    if context and problem.startswith("but "):  # "expected a single document", "but found another"
        problem, context = f"{context}, {problem}", None
    mark = exc.problem_mark or exc.context_mark
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return problem + (f" ({context})" if context else "") + where


def parse_override(text: str) -> Tuple[str, str, Any]:
    """`section.key=value` -> (section, key, value parsed as YAML)."""
    target, sep, raw = text.partition("=")
    section, dot, key = target.strip().partition(".")
    if not sep or not dot or not section or not key:
        raise UserError(f"--set {shown(text)}: expected section.key=value",
                        hint="for example --set train_args.comm_round=3")
    try:
        value = _load_yaml(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise UserError(f"--set {shown(text)}: the value is not valid YAML: {exc}") from None
    return section, key, value


def _pass_hint(what: str, given_as: str, example: bool = True) -> str:
    """"pass WHAT with --cf, e.g. --cf config/fedml_config.yaml", in the terms of the command that
    took the config: launch_client.py and check take `--cf FILE`, scripts/submit.py a positional CONFIG."""
    flag = given_as.startswith("-")
    hint = f"pass {what} {'with' if flag else 'as'} {given_as}"
    return f"{hint}, e.g. {given_as + ' ' if flag else ''}config/fedml_config.yaml" if example else hint


def _config_text(data: bytes, path: str, given_as: str) -> str:
    """The file's bytes as text: a config is UTF-8 (a BOM is allowed); anything else is refused
    with what it looks like, not a UnicodeDecodeError."""
    if data.startswith((codecs.BOM_UTF32_LE, codecs.BOM_UTF32_BE, codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        raise UserError(f"{path} is UTF-16 or UTF-32 text; a config file must be UTF-8",
                        hint="save it as UTF-8 (e.g. iconv -f UTF-16 -t UTF-8)")
    if b"\0" in data:
        raise UserError(f"{path} is a binary file (it contains NUL bytes), not a YAML config",
                        hint=_pass_hint("a YAML config", given_as))
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise UserError(f"{path} is not UTF-8 text (byte 0x{data[exc.start]:02x} on line {line}); a config "
                        "file must be UTF-8 YAML",
                        hint="save it as UTF-8, or " + _pass_hint("the right file", given_as, example=False)) from None


# Config files larger than this are refused before they are read (docs/configuration.md): a
# config is a few hundred bytes, and parsing YAML is slow and memory-hungry for huge files.
MAX_CONFIG_BYTES = 10_000_000


def _read_config_file(path: str, given_as: str) -> bytes:
    """The bytes of the config file, once it is known to be a regular file (a FIFO or a device
    could block or never end; a directory is not a config)."""
    name = plain(path)
    cf_hint = _pass_hint("an existing file", given_as)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))  # a FIFO opens without waiting
    except FileNotFoundError:
        raise UserError(f"config file not found: {name}", hint=cf_hint) from None
    except OSError as exc:  # permission denied, name too long, a loop of links
        raise UserError(f"cannot open config file {name}: {exc.strerror}", hint=cf_hint) from None
    except ValueError as exc:  # a NUL in the name
        raise UserError(f"cannot open config file {name}: {exc}", hint=cf_hint) from None
    try:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            raise UserError(f"config file {name} is a directory", hint=cf_hint)
        if not stat.S_ISREG(info.st_mode):
            raise UserError(f"config file {name} is not a regular file", hint=cf_hint)
        if info.st_size > MAX_CONFIG_BYTES:
            raise _too_big(name, info.st_size, given_as)
    except BaseException:
        os.close(fd)
        raise
    with os.fdopen(fd, "rb") as file:
        try:
            data = file.read(MAX_CONFIG_BYTES + 1)  # a file that grew, or whose size stat does not tell
        except OSError as exc:
            raise UserError(f"cannot read config file {name}: {exc.strerror}", hint=cf_hint) from None
    if len(data) > MAX_CONFIG_BYTES:
        raise _too_big(name, len(data), given_as)
    return data


def _too_big(path: str, size: int, given_as: str) -> UserError:
    return UserError(f"config file {path} is {size} bytes, over the limit of 10 MB ({MAX_CONFIG_BYTES} "
                     "bytes) for a config",
                     hint=_pass_hint("the run's YAML config", given_as, example=False)
                     + "; data goes in data_args.data_path, not in the config")


def read_yaml(path: str, given_as: str = "--cf") -> Dict[str, Any]:
    """The config file's mapping of sections. An empty file is a mistake (a file truncated or
    written by a failed command), not a request for every default: `{}` is that. given_as: how
    the command took the file, for the hints (`--cf`, or submit.py's `CONFIG`)."""
    name = plain(path)
    text = _config_text(_read_config_file(path, given_as), name, given_as)
    empty_hint = "start from config/fedml_config.yaml (or write {} in the file to run with every default)"
    if not text.strip():
        raise UserError(f"config file {name} is empty", hint=empty_hint)
    try:
        data = _load_yaml(text)
    except yaml.YAMLError as exc:
        raise UserError(f"{name} is not valid YAML: {exc}") from None
    if data is None:
        raise UserError(f"config file {name} has no settings (only comments, or an empty YAML document)",
                        hint=empty_hint)
    if not isinstance(data, dict):
        raise UserError(f"{name}: the top level must be a mapping of sections "
                        f"({', '.join(SECTIONS)})")
    return data


def _unknown_section(section: str) -> str:
    """The problem for a top-level name that is no section, saying where it belongs if it is a key
    (a config written without its sections: `comm_round: 3` at the top)."""
    owners = [name for name, cls in _SECTION_TYPES.items() if section in {f.name for f in dataclasses.fields(cls)}]
    if owners:
        return (f"unknown section {shown(section)}: it is a key of {owners[0]}; write it under "
                f"{owners[0]}: (or --set {owners[0]}.{section}=...)")
    return f"unknown section {shown(section)}; valid sections: {', '.join(SECTIONS)}"


def build_config(raw: Dict[str, Any], overrides: List[str] = (), source: str = "config") -> RunConfig:
    """Validates a YAML mapping plus `--set` overrides into a RunConfig.

    Keys of other tools' configs that have no effect here (IGNORED_KEYS) are left out
    and recorded in the result's `ignored_keys`. Raises ConfigError listing every problem found.
    """
    problems: List[str] = []
    ignored: List[str] = []
    merged: Dict[str, Dict[str, Any]] = {}
    unknown = set()
    for section, body in raw.items():
        section = str(section)
        if section not in SECTIONS:
            problems.append(_unknown_section(section))
            unknown.add(section)
            continue
        if body is None:
            body = {}
        if not isinstance(body, dict):
            problems.append(f"{source}: section {shown(section)} must be a mapping of keys")
            continue
        merged[section] = dict(body)
    for text in overrides:
        section, key, value = parse_override(text)
        merged.setdefault(section, {})[key] = value

    sections = {}
    for section, body in merged.items():
        if section not in SECTIONS:
            if section not in unknown:
                problems.append(_unknown_section(section))
            continue
        cls = _SECTION_TYPES[section]
        hints = typing.get_type_hints(cls)
        fields = {f.name: f for f in dataclasses.fields(cls)}
        values = {}
        for key, value in body.items():
            key = str(key)  # YAML keys may be numbers, null, dates...: never a field name
            where = f"{section}.{plain(key)}"
            if key not in fields and is_ignored_key(key):
                ignored.append(where)
                continue
            if key not in fields:
                hint = FEDML_KEY_HINTS.get(key)
                msg = f"unknown key {where}; " + (f"{hint}" if hint else
                                                  f"valid keys in {section}: {', '.join(fields)}")
                problems.append(msg)
                continue
            converted, ok = _check_field(where, fields[key], hints[key], value, problems)
            if ok:
                values[key] = converted
        sections[section] = cls(**values)
    if problems:
        raise ConfigError(problems)
    config = RunConfig(**sections)
    config.ignored_keys = tuple(ignored)
    return config


def load_config(path: str, overrides: List[str] = (), given_as: str = "--cf") -> RunConfig:
    return build_config(read_yaml(path, given_as), overrides, source=plain(path))


def require_resume_target(config: RunConfig, run_id: Optional[str], resume: bool):
    """Raises UserError for --resume with nothing naming the run to continue (no --run_id,
    common_args.run_id or output_dir): the launcher refuses it at once, and the readiness check
    must too (in a batch job the run id would be a new slurm-<job id>, where no run is)."""
    if not resume or run_id or config.common_args.run_id or config.common_args.output_dir:
        return
    raise UserError("--resume needs to know which run to continue",
                    hint="give the run's --run_id (its outputs are in runs/<run_id>), or set "
                         "common_args.output_dir")


def ignored_keys_warning(config: RunConfig) -> Optional[str]:
    """The one warning line for the keys build_config ignored, or None when there are none."""
    if not config.ignored_keys:
        return None
    return ("flamby-mpi: warning: ignoring keys that have no effect here: "
            + ", ".join(config.ignored_keys))


def describe_options() -> str:
    """One line per option, for --help (docs/configuration.md is scripts/config_docs.py's)."""
    lines = []
    for section, cls in _SECTION_TYPES.items():
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            default = f.default if f.default is not dataclasses.MISSING else None
            extra = f.metadata.get("help", "")
            choices = f.metadata.get("choices")
            if choices and len(choices) > 1:
                extra = (extra + "; " if extra else "") + "choices: " + ", ".join(map(str, choices))
            if f.metadata.get("minimum") is not None or f.metadata.get("maximum") is not None:
                extra = (extra + "; " if extra else "") + f"range {bounds_text(f.metadata)}"
            lines.append(f"  {section}.{f.name} ({_describe(hints[f.name])}, default {default!r})"
                         + (f": {extra}" if extra else ""))
    return "\n".join(lines)
