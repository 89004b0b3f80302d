"""RunPlan: the validated config joined with its dataset into the concrete values of one run.

The plan is resolved once and is the only thing the rest of the program reads:
every default filled in (the dataset's batch size, learning rate and optimizer,
the strategy's hyperparameters, the number of rounds), the run id and the
directories derived from it. Every rank computes the same plan from the same
config without talking to the others, so mismatches (world size, client counts)
are found before any MPI call. The run id may be decided later (rank 0's
timestamp, broadcast): `with_run_id` completes the plan then.
"""
from __future__ import annotations

import copy
import dataclasses
import importlib
import inspect
import math
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import torch

from .config import (
    FLOAT32_SMALLEST,
    MAX_COUNT,
    NAME_MAX,
    OPTIMIZER_CHOICES,
    DeviceArgs,
    RunConfig,
    expand_dir,
    run_id_problem,
)
from .datasets import DatasetSpec, resolve_dataset
from .datasets.synthetic import train_sizes
from .exit.errors import ConfigError, plain, shown
from .registry import (
    HYPERPARAMETER_USERS,
    STRATEGY_HYPERPARAMETERS,
    canonical_flamby_name,
    centre_problems,
    client_count_problems,
    is_synthetic,
    listed_centres,
)
from .storage import run_directory

_OPTIMIZERS = {
    "sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW,
    "adagrad": torch.optim.Adagrad, "rmsprop": torch.optim.RMSprop,
}  # the same names as config.OPTIMIZER_CHOICES (tests/test_unit_plan.py checks it)

# Config keys (section.key) whose change leaves the computed result as it is: how long to wait,
# what to log, where the ranks meet, how often to checkpoint. train_args.comm_round may grow
# (more rounds continue the same run): see RunPlan.rounds_change.
RESULT_NEUTRAL_KEYS = frozenset({
    "common_args.run_id", "common_args.output_dir", "common_args.checkpoint_every",
    "common_args.keep_checkpoints", "common_args.checkpoint_staging_mb", "common_args.preemption_grace_s",
    "comm_args.round_timeout_s", "comm_args.join_timeout_s", "comm_args.rendezvous_dir",
    "comm_args.secret_file", "tracking_args.log_level", "tracking_args.tensorboard",
    "device_args.memory_check", "device_args.memory_estimates_file",
    # The in-process twin computes what the MPI ranks compute, bit for bit: a run may go on in either.
    "comm_args.backend",
})
ROUNDS_KEY = "train_args.comm_round"


def _flat(config: dict) -> Dict[str, object]:
    return {f"{section}.{key}": value for section, keys in config.items() if isinstance(keys, dict)
            for key, value in keys.items()}


@dataclass(frozen=True)
class Privacy:
    """FLamby's differential privacy settings (opacus), all three given together."""
    target_epsilon: float
    target_delta: float
    max_grad_norm: float


@dataclass
class RunPlan:
    dataset: DatasetSpec
    # FLamby's indices of the centres this run trains, in rank order: rank k trains centres[k - 1]
    # (data_args.centers, default all of the dataset's). Client rank k is the strategies' client k - 1.
    centres: Tuple[int, ...]
    num_clients: int  # len(centres): the client ranks
    rounds: int  # training rounds; one evaluation-only exchange follows them (final_round)
    num_updates: int
    batch_size: int
    test_batch_size: int
    learning_rate: float
    optimizer_class: type
    weight_decay: Optional[float]  # None: not passed, the optimizer's own default applies
    seed: int
    strategy: str
    hyperparameters: Dict[str, object]  # the strategy's own, defaults filled in
    clients_per_round: int
    privacy: Optional[Privacy]
    eval_every: int  # validation_args.frequency_of_the_test
    pooled_test: str  # predictions, flamby or off
    num_workers: int
    backend: str  # MPI or inprocess
    round_timeout_s: float
    join_timeout_s: float
    secret_file: Optional[str]
    log_level: str
    tensorboard: bool
    cpu_threads: Optional[int]
    devices: DeviceArgs
    checkpoint_every: int = 1  # 0: no periodic checkpoints (preemption still writes one)
    keep_checkpoints: int = 2
    checkpoint_staging_mb: int = 2048  # a bigger part of a cut is written synchronously (staging.py)
    preemption_grace_s: float = 30.0
    quiet: bool = False  # --quiet: the console shows only warnings, errors and the final table
    resume: bool = False  # --resume: continue from the latest complete checkpoint in output_dir
    overwrite: bool = False  # --overwrite: an earlier run's files in output_dir are deleted (run_directory.py)
    run_id: Optional[str] = None  # None until agreed (with_run_id)
    output_dir: Optional[Path] = None
    rendezvous_dir: Optional[Path] = None
    # Read only here: what the rest needs of the config is a field or a method of the plan.
    _config: RunConfig = field(default=None, repr=False, compare=False)

    @property
    def world_size(self) -> int:
        return self.num_clients + 1

    def centre_of(self, rank: int) -> int:
        """The FLamby centre index client rank `rank` (1..num_clients) trains: the one place that maps
        a rank to its centre (data, seeds, results and telemetry names all ask here)."""
        if not 1 <= rank <= self.num_clients:
            raise ValueError(f"rank {rank} is no client rank of this run (1..{self.num_clients})")
        return self.centres[rank - 1]

    def rank_of(self, centre: int) -> int:
        """The client rank that trains FLamby centre `centre` (the inverse of centre_of)."""
        return self.centres.index(centre) + 1

    @property
    def clients_label(self) -> str:
        """The dataset as world-size messages name it, with the listed centres when some are picked."""
        if self.all_centres:
            return self.dataset.name
        return f"{self.dataset.name} (data_args.centers {list(self.centres)})"

    @property
    def largest_batch(self) -> int:
        """The largest batch a client's loader can form: batch_size, or fewer where the dataset knows
        its centres' sizes before loading them (synthetic) and the largest listed one is smaller; what
        the memory check scales a step's activations to."""
        if not is_synthetic(self.dataset.name):
            return self.batch_size
        data = self._config.data_args
        sizes = train_sizes(data.synthetic_num_centers, data.synthetic_samples_per_center)
        return max(1, min(self.batch_size, max(sizes[c] for c in self.centres)))

    @property
    def all_centres(self) -> bool:
        """Whether every centre of the dataset is trained, in FLamby's order (data_args.centers left
        out, or listing them all in order): then the pooled test is FLamby's own pooled set."""
        return self.centres == tuple(range(self.dataset.num_clients))

    def pooled_test_dataset(self):
        """The test set of pooled_test: flamby: FLamby's pooled test set when every centre is
        trained, else the listed centres' test sets together (a centre left out is left out here too)."""
        if self.all_centres:
            return self.dataset.pooled_dataset(train=False)
        return self.dataset.listed_centres_dataset(self.centres, train=False)

    @property
    def final_round(self) -> int:
        """The index of the exchange after the last training round, which only evaluates: the
        server sends the final model, every client evaluates it and nobody trains."""
        return self.rounds

    @property
    def exchanges(self) -> int:
        """Server -> clients -> server exchanges in a run: the training rounds plus the final one."""
        return self.rounds + 1

    def evaluates(self, round_idx: int) -> bool:
        """Whether clients evaluate the global model received for this round."""
        return round_idx == self.final_round or (round_idx > 0 and round_idx % self.eval_every == 0)

    def checkpoint_due(self, rounds_completed: int) -> bool:
        """Whether every rank saves its state once this many training rounds are complete."""
        return (self.checkpoint_every > 0 and 0 < rounds_completed <= self.rounds
                and rounds_completed % self.checkpoint_every == 0)

    @property
    def configured_output_dir(self) -> Optional[Path]:
        """common_args.output_dir as the config gives it, `~` expanded (None: runs/<run id>), known
        before the run id is (output_dir is only set by with_run_id)."""
        named = self._config.common_args.output_dir
        return expand_dir(named) if named else None

    def config_record(self) -> dict:
        """The resolved config as a plain dict: what a checkpoint's manifest records (the form
        every checkpoint so far holds, read back by result_changing_differences)."""
        return self._config.to_dict()

    def result_changing_differences(self, recorded: dict) -> List[Tuple[str, object, object]]:
        """Where this config differs from `recorded` (a checkpoint manifest's config) in what
        decides the result: (section.key, recorded value, this value), sorted by key, "<absent>"
        for a side without the key. comm_round is not among them: see rounds_change."""
        old, new = _flat(recorded), _flat(self.config_record())
        defaults = self._defaults()

        def same(key: str) -> bool:
            a, b = old.get(key, "<absent>"), new.get(key, "<absent>")
            # A key left to its default (None) on one side and set to that very default on the
            # other is the same run (the other keys, the dataset and strategy among them, being
            # compared as well).
            default = defaults.get(key)
            return a == b or (default is not None and ((a is None and b == default) or (b is None and a == default)))
        return [(k, old.get(k, "<absent>"), new.get(k, "<absent>")) for k in sorted(set(old) | set(new))
                if k not in RESULT_NEUTRAL_KEYS and k != ROUNDS_KEY and not same(k)]

    def _defaults(self) -> Dict[str, object]:
        """What the result-deciding keys a config may leave out (None) stand for in this plan's
        dataset and strategy (None: no default, the key must be given)."""
        defaults = {"train_args.batch_size": self.dataset.batch_size,
                    "train_args.learning_rate": self.dataset.learning_rate,
                    "validation_args.test_batch_size": self.batch_size}
        defaults.update({f"train_args.{key}": value for key, value in STRATEGY_HYPERPARAMETERS[self.strategy].items()})
        return defaults

    def rounds_change(self, recorded: dict) -> Optional[Tuple[object, object]]:
        """(recorded comm_round, this config's) when they differ, else None; None stands for a
        comm_round left to the dataset's default."""
        old, new = _flat(recorded).get(ROUNDS_KEY), _flat(self.config_record()).get(ROUNDS_KEY)
        return None if old == new else (old, new)

    @property
    def optimizer_name(self) -> str:
        """The client optimizer as results and the banner show it, e.g. torch.optim.sgd.SGD."""
        return f"{self.optimizer_class.__module__}.{self.optimizer_class.__name__}"

    def with_run_id(self, run_id: str) -> "RunPlan":
        """The plan of the run named run_id: its output and rendezvous directories resolved.
        Raises ConfigError if the run id cannot name its files there, or the output directory
        is a file or cannot be made (checked on every rank, without writing anything)."""
        problems = directory_problems(self._config, run_id)
        if problems:
            raise ConfigError(problems)
        config = copy.deepcopy(self._config)
        config.common_args.run_id = run_id
        output_dir, rendezvous_dir = run_directories(config, run_id)
        return dataclasses.replace(self, run_id=run_id, output_dir=output_dir, _config=config,
                                   rendezvous_dir=rendezvous_dir)

    def config_yaml(self) -> str:
        """The resolved config as written to config.yaml (and compared by separately started ranks)."""
        return self._config.to_yaml()

    def summary(self) -> dict:
        return {
            "dataset": self.dataset.name, "strategy": self.strategy,
            # e.g. Cyclic's pass_model_on, which changes what the run measures
            **self.hyperparameters,
            "num_clients": self.num_clients,
            # only when data_args.centers picks some: a run of all centres shows what it did before
            **({} if self.all_centres else {"centres": ",".join(map(str, self.centres))}),
            "rounds": self.rounds, "num_updates": self.num_updates,
            "batch_size": self.batch_size, "learning_rate": self.learning_rate,
            "optimizer": self.optimizer_name,
            # only when set: a run without it shows (and computes) exactly what it did before
            **({} if self.weight_decay is None else {"weight_decay": self.weight_decay}),
            "seed": self.seed,
        }

    def optimizer_kwargs(self) -> Dict[str, float]:
        """Keyword arguments of the client optimizer besides the parameters and the learning
        rate: weight_decay only when the config sets it (never a 0.0 that would override an
        optimizer default such as AdamW's 0.01)."""
        return {} if self.weight_decay is None else {"weight_decay": self.weight_decay}


def run_directories(config: RunConfig, run_id: str):
    """(output_dir, rendezvous_dir) of the run named run_id."""
    output_dir = expand_dir(config.common_args.output_dir) if config.common_args.output_dir \
        else Path("runs", run_id)
    rendezvous_dir = expand_dir(config.comm_args.rendezvous_dir) if config.comm_args.rendezvous_dir \
        else output_dir / "rendezvous"
    return output_dir, rendezvous_dir


def _nearest_existing(path: Path) -> Path:
    """path, or its nearest ancestor that exists (the directory a new path would be made in)."""
    path = Path(os.path.abspath(path))
    for candidate in (path, *path.parents):
        if os.path.lexists(candidate):
            return candidate
    return Path(path.anchor)


def name_max(directory: Path) -> int:
    """The longest file name, in bytes, that the file system of `directory` (or of the nearest
    ancestor that exists) takes; NAME_MAX where it cannot tell."""
    try:
        return min(NAME_MAX, int(os.pathconf(_nearest_existing(directory), "PC_NAME_MAX")))
    except (OSError, ValueError, AttributeError):  # no pathconf (Windows), or no such limit
        return NAME_MAX


def directory_problem(path: Path, key: str) -> Optional[str]:
    """Why the directory `path` (the setting `key`) could not be made or written, found without
    writing anything: a file where it or one of its parents should be, a parent that does not let
    this user create it, a name too long. None when the run can make it and write in it."""
    target = Path(os.path.abspath(path))
    hint = "; choose another directory (it is made if missing)"
    for candidate in (target, *target.parents):
        try:
            info = os.stat(candidate)
        except (FileNotFoundError, NotADirectoryError):  # not made yet, or under a file: look up
            continue
        except OSError as exc:  # permission denied on a parent, a loop of links, a name too long
            return f"{key}: {plain(path)} cannot be reached ({plain(candidate)}: {exc.strerror}){hint}"
        # The directory as the user wrote it; a parent in full (`..`, a relative path, resolved)
        made, where = ("", plain(path)) if candidate == target else (f"{plain(path)} cannot be made: ",
                                                                      plain(candidate))
        if not stat.S_ISDIR(info.st_mode):
            kind = "a file, not a directory" if stat.S_ISREG(info.st_mode) else "not a directory"
            return f"{key}: {made}{where} is {kind}{hint}"
        if not os.access(candidate, os.W_OK | os.X_OK):
            return f"{key}: {made}{where} is not writable by you{hint}"
        return None
    return None


def inside_a_run_problem(path: Path, key: str) -> Optional[str]:
    """Why the output directory `path` must not be used: it lies in the logs/, checkpoints/ or
    tensorboard/ of another run's directory, whose pruning or --overwrite would delete it."""
    owner = run_directory.owning_run(path)
    if owner is None:
        return None
    run_dir, part = owner
    return (f"{key}: {plain(path)} is inside the {part}/ of the run in {plain(run_dir)}: the two runs' files "
            f"would mix, and that run's --overwrite or checkpoint pruning would delete this one's; "
            f"choose a directory outside {plain(run_dir / part)}")


def directory_problems(config: RunConfig, run_id: Optional[str]) -> List[str]:
    """Problems with the run's directories, on every rank before any MPI call: run id
    (run_id_problem, against the limit of the file systems its names go to), and an output
    directory that is a file or cannot be made. Without a run id yet (rank 0 picks a timestamp,
    broadcast later), the output directory's parent `runs` is checked."""
    key = "common_args.output_dir" + ("" if config.common_args.output_dir else " (default runs/<run_id>)")
    if run_id is None:
        path = expand_dir(config.common_args.output_dir) if config.common_args.output_dir else Path("runs")
        problem = directory_problem(path, key) or inside_a_run_problem(path, key)
        return [problem] if problem else []
    output_dir, rendezvous_dir = run_directories(config, run_id)
    # The run id names the output directory (runs/<run_id>) and files in the rendezvous directory.
    limit = min(name_max(rendezvous_dir), NAME_MAX if config.common_args.output_dir else name_max(output_dir))
    problem = run_id_problem(run_id, limit)
    if problem:
        return [problem]
    problem = directory_problem(output_dir, key) or inside_a_run_problem(output_dir, key)
    return [problem] if problem else []


def resolve_hyperparameters(strategy: str, train_args) -> Dict[str, object]:
    """The strategy's train_args values, its defaults filled in where the config leaves them out."""
    return {key: default if getattr(train_args, key) is None else getattr(train_args, key)
            for key, default in STRATEGY_HYPERPARAMETERS[strategy].items()}


def resolve_optimizer(name: str) -> type:
    key = name.strip()
    if key.lower() in _OPTIMIZERS:
        return _OPTIMIZERS[key.lower()]
    if "." in key:
        module_name, _, cls_name = key.rpartition(".")
        try:
            cls = getattr(importlib.import_module(module_name), cls_name)
        except (ImportError, AttributeError, ValueError, TypeError):  # e.g. ".SGD", "..SGD"
            cls = None
        if isinstance(cls, type) and issubclass(cls, torch.optim.Optimizer) and cls is not torch.optim.Optimizer:
            return cls
    raise ValueError(f"train_args.client_optimizer: {shown(name)} is not an optimizer; valid choices: "
                     f"{', '.join(OPTIMIZER_CHOICES)} or a dotted class such as torch.optim.SGD")


def _accepts_keyword(cls: type, name: str) -> bool:
    try:
        parameters = inspect.signature(cls).parameters.values()
    except (TypeError, ValueError):  # no signature to read: let the optimizer itself decide
        return True
    return any(p.name == name or p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters)


def _overflows(optimizer_class: type, learning_rate: float, weight_decay: Optional[float]) -> bool:
    """Whether a few steps of the optimizer on a float32 parameter fail because a scalar it derives
    from the learning rate or weight decay is beyond float32: Adam, AdamW, NAdam and Adamax divide
    the learning rate by 1 - beta1 (0.1) in their first step, so 3.4e38 passes the config and
    then stops the run with "value cannot be converted to type float without overflow"."""
    parameter = torch.nn.Parameter(torch.ones(2, dtype=torch.float32))
    kwargs = {} if weight_decay is None else {"weight_decay": weight_decay}
    try:
        optimizer = optimizer_class([parameter], lr=learning_rate, **kwargs)
        for _ in range(3):
            parameter.grad = torch.ones_like(parameter)
            optimizer.step()
    except RuntimeError as exc:
        return "overflow" in str(exc)
    except Exception:  # noqa: BLE001 - anything else is no overflow; the run reports it as it does
        return False
    return False


def _largest_without_overflow(fits, high: float) -> float:
    """About the largest value in (0, high] for which fits(value) holds (fits is monotone: small
    values fit), rounded down to 3 significant digits; 0 if none does."""
    low_exponent, high_exponent = math.log2(FLOAT32_SMALLEST), math.log2(high)
    if not fits(FLOAT32_SMALLEST):
        return 0.0
    for _ in range(40):  # bisection on the exponent: from 1e-45 to 3e38 in 40 probes of a millisecond
        middle = (low_exponent + high_exponent) / 2
        low_exponent, high_exponent = (middle, high_exponent) if fits(2.0 ** middle) else (low_exponent, middle)
    largest = 2.0 ** low_exponent
    unit = 10.0 ** (math.floor(math.log10(largest)) - 2)
    return math.floor(largest / unit) * unit


def _optimizer_problems(optimizer_class: type, learning_rate: float, weight_decay: Optional[float]) -> List[str]:
    """A learning rate that torch's own optimizer cannot use in float32 (checked on a two-element
    parameter, in milliseconds; an optimizer from another package is not run here)."""
    if not optimizer_class.__module__.startswith("torch.optim"):
        return []
    from .runtime import optim_without_dynamo

    optim_without_dynamo.install()  # as the driver does: a step would import torch._dynamo
    if not _overflows(optimizer_class, learning_rate, weight_decay):
        return []
    largest = _largest_without_overflow(lambda lr: not _overflows(optimizer_class, lr, weight_decay),
                                        learning_rate)
    with_decay = "" if weight_decay is None else f" with weight_decay {weight_decay:g}"
    return [f"train_args.learning_rate: {shown(learning_rate)} overflows float32 (the models' dtype) in the first "
            f"steps of {optimizer_class.__module__}.{optimizer_class.__name__}{with_decay}, which scales it up; "
            f"with this optimizer it must be in [0, {largest:.3g}]"]


def _strategy_problems(train, num_clients: int) -> List[str]:
    from .strategies import STRATEGIES

    strategy = STRATEGIES[train.federated_optimizer]
    own = STRATEGY_HYPERPARAMETERS[strategy.name]
    problems = []
    for key, users in HYPERPARAMETER_USERS.items():
        value = getattr(train, key)
        if key in own:
            if value is None and own[key] is None:
                problems.append(f"train_args.{key}: {strategy.name} needs it (FLamby's name); "
                                f"strategies using it: {', '.join(users)}")
        elif value is not None:
            problems.append(f"train_args.{key}: not used by {strategy.name} (only by {', '.join(users)}); "
                            "remove it or choose one of those strategies")
    dp = [train.dp_target_epsilon, train.dp_target_delta, train.dp_max_grad_norm]
    if any(v is not None for v in dp):
        if any(v is None for v in dp):
            problems.append("train_args.dp_target_epsilon, dp_target_delta and dp_max_grad_norm go together "
                            "(differential privacy needs all three)")
        else:
            try:
                import opacus  # noqa: F401
            except ImportError:
                problems.append("train_args.dp_*: differential privacy needs opacus, which is not installed: "
                                "pip install opacus")
    per_round = train.client_num_per_round
    if per_round is not None:
        if per_round > num_clients:
            problems.append(f"train_args.client_num_per_round: at most {num_clients} (the centres), got {per_round}")
        elif per_round < num_clients and not strategy.allows_client_sampling:
            problems.append(f"train_args.client_num_per_round: {strategy.name} picks its own centre each "
                            "round; leave client_num_per_round out")
    return problems


def make_plan(config: RunConfig, run_id: Optional[str] = None, quiet: bool = False,
              resume: bool = False, overwrite: bool = False) -> RunPlan:
    """The plan of this config; run_id (from --run_id) wins over common_args.run_id."""
    seed = config.common_args.random_seed
    if not is_synthetic(config.data_args.dataset) and canonical_flamby_name(config.data_args.dataset) is None:
        # A dataset module of the user's may build on the meta device: torch's meta kernels are there
        # for it. It may also make cyclic garbage as it is imported: the collector is back on first.
        from .runtime import import_gc, torch_without_meta_kernels

        torch_without_meta_kernels.load()
        import_gc.resume()
    dataset = resolve_dataset(config.data_args, seed)
    train = config.train_args
    problems: List[str] = []
    # NUM_CLIENTS of the dataset module itself (FLamby's, where FLamby is installed); the registry's
    # copy only serves world_size on login nodes without FLamby.
    problems += centre_problems(config.data_args.centers, dataset.name, dataset.num_clients)
    problems += [p for p in [dataset.data_path_problem()] if p is not None]
    centres = listed_centres(None if problems else config.data_args.centers, dataset.num_clients)
    n = len(centres)

    problems += client_count_problems(config, dataset.name, dataset.num_clients)
    problems += _strategy_problems(train, n)
    if dataset.needs_cuda and not config.device_args.using_gpu:
        problems.append(f"device_args.using_gpu: {dataset.needs_cuda}; set it to true and run on GPU nodes")

    optimizer_class = dataset.optimizer_class
    if train.client_optimizer is not None:
        try:
            optimizer_class = resolve_optimizer(train.client_optimizer)
        except ValueError as exc:
            problems.append(str(exc))
            optimizer_class = None
    if train.weight_decay is not None and optimizer_class is not None \
            and not _accepts_keyword(optimizer_class, "weight_decay"):
        problems.append(f"train_args.weight_decay: the client optimizer {optimizer_class.__module__}."
                        f"{optimizer_class.__name__} takes no weight_decay; remove it or choose an "
                        f"optimizer that does ({', '.join(OPTIMIZER_CHOICES)})")

    learning_rate = train.learning_rate if train.learning_rate is not None else dataset.learning_rate
    if optimizer_class is not None and not problems:
        problems += _optimizer_problems(optimizer_class, learning_rate, train.weight_decay)
    if train.federated_optimizer == "Scaffold":
        scale = resolve_hyperparameters("Scaffold", train)["server_learning_rate"] * learning_rate \
            * train.num_updates
        if not scale >= FLOAT32_SMALLEST:  # 0 (or 0 once in float32): a NaN model after round 1
            problems.append(f"train_args.learning_rate: Scaffold divides by server_learning_rate * learning_rate "
                            f"* num_updates, which is {scale:g} here: it must be > 0 in float32 "
                            f"(at least {FLOAT32_SMALLEST:g})")

    rounds = train.comm_round
    if rounds is None:
        rounds = int(dataset.get_nb_max_rounds(train.num_updates))
        if not 1 <= rounds <= MAX_COUNT:
            problems.append(f"train_args.comm_round: {dataset.name}'s get_nb_max_rounds("
                            f"{train.num_updates}) gives {rounds}, outside [1, {MAX_COUNT}]; set comm_round "
                            "explicitly")
    problems += directory_problems(config, run_id if run_id is not None else config.common_args.run_id)
    if problems:
        raise ConfigError(problems)

    batch_size = train.batch_size or dataset.batch_size
    privacy = None
    if train.dp_target_epsilon is not None:  # the three go together (_strategy_problems)
        privacy = Privacy(train.dp_target_epsilon, train.dp_target_delta, train.dp_max_grad_norm)
    plan = RunPlan(
        dataset=dataset, centres=centres, num_clients=n, rounds=rounds, num_updates=train.num_updates,
        batch_size=batch_size, test_batch_size=config.validation_args.test_batch_size or batch_size,
        learning_rate=learning_rate,
        optimizer_class=optimizer_class, weight_decay=train.weight_decay, seed=seed,
        strategy=train.federated_optimizer,
        hyperparameters=resolve_hyperparameters(train.federated_optimizer, train),
        clients_per_round=train.client_num_per_round or n, privacy=privacy,
        eval_every=config.validation_args.frequency_of_the_test,
        pooled_test=config.validation_args.pooled_test, num_workers=config.data_args.num_workers,
        backend=config.comm_args.backend, round_timeout_s=config.comm_args.round_timeout_s,
        join_timeout_s=config.comm_args.join_timeout_s, secret_file=config.comm_args.secret_file,
        log_level=config.tracking_args.log_level, tensorboard=config.tracking_args.tensorboard,
        quiet=quiet, resume=resume, overwrite=overwrite, cpu_threads=config.device_args.cpu_threads,
        checkpoint_every=config.common_args.checkpoint_every,
        keep_checkpoints=config.common_args.keep_checkpoints,
        checkpoint_staging_mb=config.common_args.checkpoint_staging_mb,
        preemption_grace_s=config.common_args.preemption_grace_s,
        devices=config.device_args, _config=config,
    )
    run_id = run_id if run_id is not None else config.common_args.run_id
    return plan.with_run_id(run_id) if run_id is not None else plan
