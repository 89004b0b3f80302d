"""Unit tests of flamby_mpi.plan (config + dataset -> run values), synthetic dataset only."""
import ast
import os
from pathlib import Path

import pytest
import torch

from flamby_mpi.config import OPTIMIZER_CHOICES, RunConfig, build_config
from flamby_mpi.exit.errors import ConfigError
from flamby_mpi.plan import make_plan, resolve_optimizer


def _plan(**sections):
    return make_plan(build_config(sections))


def test_plan_defaults_for_synthetic():
    plan = make_plan(RunConfig())
    assert plan.dataset.name == "synthetic"
    assert plan.num_clients == 4
    assert plan.world_size == 5
    assert plan.batch_size == 16
    assert plan.test_batch_size == 16
    assert plan.learning_rate == 0.05
    assert plan.optimizer_class is torch.optim.SGD
    assert plan.num_updates == 100
    assert plan.seed == 0
    # comm_round null -> the dataset's get_nb_max_rounds(num_updates)
    assert plan.rounds == plan.dataset.get_nb_max_rounds(100) == 4
    assert plan.summary() == {
        "dataset": "synthetic", "strategy": "FedAvg", "num_clients": 4, "rounds": 4,
        "num_updates": 100, "batch_size": 16, "learning_rate": 0.05,
        "optimizer": "torch.optim.sgd.SGD", "seed": 0,
    }


def test_summary_shows_the_strategy_hyperparameters_with_defaults():
    summary = _plan(train_args={"federated_optimizer": "Cyclic", "pass_model_on": False}).summary()
    assert (summary["strategy"], summary["deterministic_cycle"], summary["pass_model_on"]) == ("Cyclic", False, False)


def test_rounds_follow_num_updates_when_comm_round_is_null():
    plan = _plan(train_args={"num_updates": 10})
    assert plan.rounds == plan.dataset.get_nb_max_rounds(10) == 40


def test_plan_takes_config_values():
    plan = _plan(train_args={"comm_round": 10, "num_updates": 50, "batch_size": 8,
                             "learning_rate": 0.5, "client_optimizer": "adam"},
                 validation_args={"test_batch_size": 64},
                 data_args={"synthetic_num_centers": 3},
                 common_args={"random_seed": 9})
    assert (plan.rounds, plan.num_updates, plan.batch_size, plan.test_batch_size) == (10, 50, 8, 64)
    assert plan.learning_rate == 0.5
    assert plan.optimizer_class is torch.optim.Adam
    assert (plan.num_clients, plan.world_size, plan.seed) == (3, 4, 9)


def test_optimizer_name_is_the_dotted_class_as_flamby_prints_it():
    plan = _plan(train_args={"client_optimizer": "adam"})
    assert plan.optimizer_name == "torch.optim.adam.Adam" == plan.summary()["optimizer"]
    # results.csv writes FLamby's optimizer_class column as str(class) from this name
    assert f"<class '{plan.optimizer_name}'>" == str(plan.optimizer_class)


def test_learning_rate_zero_is_kept():
    assert _plan(train_args={"learning_rate": 0.0}).learning_rate == 0.0


def test_matching_client_counts_pass():
    plan = _plan(train_args={"client_num_in_total": 4, "client_num_per_round": 4},
                 device_args={"worker_num": 4})
    assert plan.num_clients == 4


def test_client_count_mismatches_are_reported_together():
    with pytest.raises(ConfigError) as info:
        _plan(train_args={"client_num_in_total": 3, "client_num_per_round": 7,
                          "client_optimizer": "sgdd"},
              device_args={"worker_num": 5})
    problems = info.value.problems
    assert len(problems) == 4, problems
    assert problems[0] == ("train_args.client_num_in_total: synthetic has 4 centres, so this must be 4 "
                           "(or be left out), got 3")
    assert problems[1].startswith("device_args.worker_num:") and problems[1].endswith("got 5")
    assert problems[2] == "train_args.client_num_per_round: at most 4 (the centres), got 7"
    assert "'sgdd' is not an optimizer" in problems[3]


def test_client_sampling_is_allowed_below_the_number_of_centres():
    assert _plan(train_args={"client_num_per_round": 2}).clients_per_round == 2


def test_strategy_hyperparameters_missing_or_foreign_are_reported():
    with pytest.raises(ConfigError) as info:
        _plan(train_args={"federated_optimizer": "FedProx", "tau": 0.1, "pass_model_on": False})
    text = "\n".join(info.value.problems)
    assert "train_args.mu: FedProx needs it" in text
    assert "train_args.tau: not used by FedProx (only by FedAdam, FedYogi, FedAdagrad)" in text
    assert "train_args.pass_model_on: not used by FedProx (only by Cyclic)" in text
    with pytest.raises(ConfigError) as info:
        _plan(train_args={"federated_optimizer": "Cyclic", "client_num_per_round": 2})
    assert "Cyclic picks its own centre each round" in info.value.problems[0]


def test_unknown_strategy_lists_the_valid_ones():
    from flamby_mpi.config import build_config

    with pytest.raises(ConfigError) as info:
        build_config({"train_args": {"federated_optimizer": "FedNova"}})
    assert "FedAvg, FedProx, FedAdam, FedYogi, FedAdagrad, Scaffold, Cyclic, FedAvgFineTuning" in \
        info.value.problems[0]


@pytest.mark.parametrize("name, cls", [
    ("sgd", torch.optim.SGD), ("SGD", torch.optim.SGD), ("adam", torch.optim.Adam),
    ("AdamW", torch.optim.AdamW), ("adagrad", torch.optim.Adagrad), ("RMSprop", torch.optim.RMSprop),
    ("torch.optim.Adam", torch.optim.Adam), (" torch.optim.SGD ", torch.optim.SGD),
    ("torch.optim.adam.Adam", torch.optim.Adam),
])
def test_resolve_optimizer(name, cls):
    assert resolve_optimizer(name) is cls


def test_the_plan_resolves_exactly_the_optimizer_names_the_config_offers():
    """config.OPTIMIZER_CHOICES (what --help and errors list) and the plan's table of classes are
    two tables of the code: a name in one only would be offered and refused, or taken unlisted."""
    from flamby_mpi import plan as plan_module

    assert set(plan_module._OPTIMIZERS) == set(OPTIMIZER_CHOICES)
    for name in OPTIMIZER_CHOICES:
        cls = resolve_optimizer(name)
        assert issubclass(cls, torch.optim.Optimizer) and cls.__name__.lower() == name


@pytest.mark.parametrize("name", ["sgdd", "torch.optim.Nope", "torch.nn.Linear", "no_such_module.Opt",
                                  "os.path", "torch..SGD"])
def test_bad_optimizer_is_reported(name):
    with pytest.raises(ValueError) as info:
        resolve_optimizer(name)
    text = str(info.value)
    assert text.startswith(f"train_args.client_optimizer: {name!r} is not an optimizer")
    assert "sgd, adam, adamw, adagrad, rmsprop" in text
    with pytest.raises(ConfigError) as info:
        _plan(train_args={"client_optimizer": name})
    assert len(info.value.problems) == 1
    assert "train_args.client_optimizer" in info.value.problems[0]


@pytest.mark.parametrize("name", [".SGD", "..SGD"])
def test_relative_optimizer_name_is_a_config_problem(name):
    with pytest.raises(ConfigError) as info:
        _plan(train_args={"client_optimizer": name})
    assert info.value.problems[0].startswith("train_args.client_optimizer:")


def test_abstract_optimizer_base_class_is_rejected():
    with pytest.raises(ValueError):
        resolve_optimizer("torch.optim.Optimizer")


def test_differential_privacy_settings_go_together_and_need_opacus():
    with pytest.raises(ConfigError) as info:
        _plan(train_args={"dp_target_epsilon": 1.0})
    assert "go together" in info.value.problems[0]
    try:
        import opacus  # noqa: F401
    except ImportError:
        with pytest.raises(ConfigError) as info:
            _plan(train_args={"dp_target_epsilon": 1.0, "dp_target_delta": 1e-3, "dp_max_grad_norm": 1.0})
        assert "pip install opacus" in info.value.problems[0]
    else:
        plan = _plan(train_args={"dp_target_epsilon": 1.0, "dp_target_delta": 1e-3, "dp_max_grad_norm": 1.0})
        assert plan.privacy.max_grad_norm == 1.0


# --- weight_decay ---------------------------------------------------------------------------

def test_weight_decay_unset_passes_nothing_to_the_optimizer():
    plan = _plan(train_args={"client_optimizer": "adamw"})
    assert plan.weight_decay is None and plan.optimizer_kwargs() == {}
    assert "weight_decay" not in plan.summary()


def test_weight_decay_reaches_the_plan_and_the_clients_optimizer():
    from flamby_mpi.federation.client import ClientRun

    plan = _plan(train_args={"weight_decay": 0.001, "comm_round": 1})
    assert plan.weight_decay == 0.001 and plan.optimizer_kwargs() == {"weight_decay": 0.001}
    assert plan.summary()["weight_decay"] == 0.001
    client = ClientRun(plan, rank=1, device=torch.device("cpu"))
    assert client.learner.optimizer.param_groups[0]["weight_decay"] == 0.001
    assert ClientRun(_plan(train_args={"comm_round": 1}), rank=1, device=torch.device("cpu")) \
        .learner.optimizer.param_groups[0]["weight_decay"] == 0  # SGD's own default


def test_weight_decay_with_an_optimizer_that_takes_none_is_reported():
    with pytest.raises(ConfigError) as info:
        _plan(train_args={"weight_decay": 0.1, "client_optimizer": "torch.optim.LBFGS"})
    assert info.value.problems == [
        "train_args.weight_decay: the client optimizer torch.optim.lbfgs.LBFGS takes no weight_decay; "
        "remove it or choose an optimizer that does (sgd, adam, adamw, adagrad, rmsprop)"]
    # Without weight_decay that optimizer is fine as before.
    assert _plan(train_args={"client_optimizer": "torch.optim.LBFGS"}).optimizer_class is torch.optim.LBFGS


# --- values checked where they are used (issue 18) ------------------------------------------------

def test_an_optimizer_that_scales_its_learning_rate_past_float32_is_refused_with_the_largest_it_takes():
    """Adam divides the learning rate by 1 - beta1 in its first step: 3.4e38 passed the config and
    stopped the run with "value cannot be converted to type float without overflow"."""
    with pytest.raises(ConfigError) as info:
        _plan(train_args={"client_optimizer": "adam", "learning_rate": 3.4e38})
    (problem,) = info.value.problems
    assert problem.startswith("train_args.learning_rate: 3.4e+38 overflows float32") and "adam.Adam" in problem
    largest = float(problem.rpartition("must be in [0, ")[2].rstrip("]"))
    assert 3e37 < largest < 3.41e37
    plan = _plan(train_args={"client_optimizer": "adam", "learning_rate": largest})  # the range it gave works
    assert plan.learning_rate == largest
    assert _plan(train_args={"client_optimizer": "sgd", "learning_rate": 3.4e38}).learning_rate == 3.4e38


def test_scaffold_needs_a_divisor_above_zero_in_float32():
    # Scaffold divides by server_learning_rate * learning_rate * num_updates: 0 made a NaN model.
    for train in ({"learning_rate": 0.0}, {"learning_rate": 1e-30, "server_learning_rate": 1e-30}):
        with pytest.raises(ConfigError, match="train_args.learning_rate: Scaffold divides by server_learning_rate"):
            _plan(train_args={"federated_optimizer": "Scaffold", **train})
    assert _plan(train_args={"federated_optimizer": "Scaffold", "learning_rate": 0.01}).learning_rate == 0.01
    assert _plan(train_args={"learning_rate": 0.0}).learning_rate == 0.0  # FedAvg does not divide by it


def test_output_and_rendezvous_dirs_expand_the_home_directory(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    plan = make_plan(build_config({"common_args": {"output_dir": "~/out"}}), run_id="r1")
    assert plan.output_dir == tmp_path / "out" and plan.rendezvous_dir == tmp_path / "out" / "rendezvous"
    assert plan.config_record()["common_args"]["output_dir"] == "~/out"  # the config as written (fingerprint)
    plan = make_plan(build_config({"comm_args": {"rendezvous_dir": "~/rdv"}}), run_id="r1")
    assert plan.rendezvous_dir == tmp_path / "rdv" and plan.output_dir == Path("runs", "r1")
    assert not (tmp_path / "out").exists() and not Path("~").exists()  # the plan makes nothing


def _unwritable_parent(tmp_path):
    if os.geteuid() == 0:  # root may create anywhere but /proc's directories (access(2) says so too)
        return Path("/proc/1")
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    return locked


@pytest.mark.parametrize("where", ["file", "under-file", "unwritable", "unwritable-inner"])
def test_an_output_dir_that_cannot_be_made_is_refused_naming_it(where, tmp_path):
    (tmp_path / "a_file").write_text("x")
    out, parent, fragment = {
        "file": (tmp_path / "a_file", None, "is a file, not a directory"),
        "under-file": (tmp_path / "a_file" / "x" / "y", tmp_path / "a_file", "is a file, not a directory"),
        "unwritable": (_unwritable_parent(tmp_path) / "out", None, "is not writable by you"),
        "unwritable-inner": (_unwritable_parent(tmp_path) / "out" / "deeper", None, "is not writable by you"),
    }[where]
    before = sorted(tmp_path.rglob("*"))
    for run_id in ("r1", None):  # with a run id, and before rank 0 picks one
        with pytest.raises(ConfigError) as info:
            make_plan(build_config({"common_args": {"output_dir": str(out)}}), run_id=run_id)
        (problem,) = info.value.problems
        assert problem.startswith(f"common_args.output_dir: {out}") and fragment in problem, problem
        if parent is not None:
            assert f"cannot be made: {parent} is a file" in problem
    assert sorted(tmp_path.rglob("*")) == before


def test_a_file_named_runs_is_refused_for_the_default_output_dir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").write_text("x")
    with pytest.raises(ConfigError, match=r"common_args.output_dir \(default runs/<run_id>\): runs is a file"):
        make_plan(RunConfig())
    with pytest.raises(ConfigError, match=r"\(default runs/<run_id>\): runs/r1 cannot be made: .*runs is a file"):
        make_plan(RunConfig(), run_id="r1")
    (tmp_path / "runs").unlink()
    (tmp_path / "runs").mkdir()
    assert make_plan(RunConfig(), run_id="r1").output_dir == Path("runs", "r1")


def test_a_plan_checks_the_run_id_against_its_directories_own_name_limit(tmp_path, monkeypatch):
    """Where a file system takes shorter names than 255 bytes (eCryptfs: 143), the run id's
    bound follows the limit the directory reports (os.pathconf PC_NAME_MAX)."""
    from flamby_mpi import plan as plan_module

    asked = []

    def pathconf(path, name):
        asked.append((str(path), name))
        return 143

    monkeypatch.setattr(plan_module.os, "pathconf", pathconf)
    config = build_config({"common_args": {"output_dir": str(tmp_path / "out")}})
    assert make_plan(config, run_id="r" * 104).run_id == "r" * 104  # 143 - 39
    with pytest.raises(ConfigError, match="it is 105 bytes .* 143-byte limit on a name: at most 104 bytes"):
        make_plan(config, run_id="r" * 105)
    assert (str(tmp_path), "PC_NAME_MAX") in asked  # the nearest directory that exists
# --- the plan is the one reader of the config --------------------------------------------------

PACKAGE = Path(__file__).resolve().parents[1] / "flamby_mpi"
# What only the plan may read of the config: its private copy and the old whole-dict accessor.
CONFIG_INSIDES = frozenset({"_config", "config_dict"})
# The whole resolved config as a dict is for the checkpoint manifest alone (written by the server).
CONFIG_RECORD_READERS = {"config_record": {"flamby_mpi.federation.server"}}


def _module_name(path: Path, package: Path) -> str:
    parts = path.relative_to(package.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def config_readers_outside_the_plan(package: Path = PACKAGE):
    """(module, line, name) for every read of the config past the plan: an attribute or a
    getattr-style string naming CONFIG_INSIDES outside plan.py, or config_record elsewhere than
    its one reader."""
    found = []
    for path in sorted(package.rglob("*.py")):
        module = _module_name(path, package)
        if module == "flamby_mpi.plan":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Attribute):
                name = node.attr
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                name = node.value
            else:
                continue
            if name in CONFIG_INSIDES or module not in CONFIG_RECORD_READERS.get(name, {module}):
                found.append((module, node.lineno, name))
    return found


def test_nothing_past_the_plan_reads_the_config():
    assert config_readers_outside_the_plan() == []


def test_the_guard_sees_a_config_read_past_the_plan(tmp_path):
    package = tmp_path / "flamby_mpi"
    (reader,) = CONFIG_RECORD_READERS["config_record"]
    files = {"flamby_mpi.plan": "def f(plan):\n    return plan._config, plan.config_record()\n",
             reader: "def f(plan):\n    return plan.config_record()\n",
             "flamby_mpi.driver": "def f(plan):\n    return plan._config.common_args.output_dir\n",
             "flamby_mpi.cli": "def f(plan):\n    return getattr(plan, 'config_dict')()\n",
             "flamby_mpi.world_size": "def f(plan):\n    return plan.config_record()['train_args']\n"}
    for module, text in files.items():
        path = tmp_path.joinpath(*module.split(".")).with_suffix(".py")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    assert config_readers_outside_the_plan(package) == [
        ("flamby_mpi.cli", 2, "config_dict"), ("flamby_mpi.driver", 2, "_config"),
        ("flamby_mpi.world_size", 2, "config_record")]


def test_a_checkpoint_keeps_recording_the_config_dict_and_resume_reads_it():
    plan = _plan(train_args={"comm_round": 3})
    recorded = plan.config_record()
    assert recorded == plan._config.to_dict()  # the manifest's format, as every checkpoint holds it
    assert plan.result_changing_differences(recorded) == [] and plan.rounds_change(recorded) is None
    neutral = _plan(train_args={"comm_round": 3}, comm_args={"round_timeout_s": 5})
    assert neutral.result_changing_differences(recorded) == []
    # The in-process twin is bitwise the MPI run: a run checkpointed under one goes on under the other.
    inprocess = _plan(train_args={"comm_round": 3}, comm_args={"backend": "inprocess"})
    assert inprocess.result_changing_differences(recorded) == []
    changed = _plan(train_args={"comm_round": 5, "learning_rate": 0.5})
    assert changed.result_changing_differences(recorded) == [("train_args.learning_rate", None, 0.5)]
    assert changed.rounds_change(recorded) == (3, 5)
    del recorded["train_args"]["client_optimizer"]
    assert ("train_args.client_optimizer", "<absent>", None) in plan.result_changing_differences(recorded)
    assert plan.configured_output_dir is None
    assert _plan(common_args={"output_dir": "runs/x"}).configured_output_dir == Path("runs/x")
    assert _plan(common_args={"output_dir": "~/x"}).configured_output_dir == Path.home() / "x"  # as output_dir


@pytest.mark.parametrize("inside", ["logs", "logs/deeper", "checkpoints/round_3", "tensorboard", "link-to-logs"])
def test_an_output_dir_inside_another_runs_own_directories_is_refused(inside, tmp_path):
    """A run made in another run's logs/ (or checkpoints/, tensorboard/) mixed its files with that
    run's, and that run's --overwrite deleted it whole."""
    run = tmp_path / "finished"
    for part in ("logs", "checkpoints/round_3", "tensorboard"):
        (run / part).mkdir(parents=True)
    (run / ".flamby-mpi.lock").write_text("")
    (run / "results.json").write_text("{}")
    (tmp_path / "link-to-logs").symlink_to(run / "logs")
    out = tmp_path / inside if inside == "link-to-logs" else run / inside
    part = "checkpoints" if inside.startswith("checkpoints") else inside.split("/")[0].replace("link-to-", "")
    before = sorted(tmp_path.rglob("*"))
    for run_id in ("r1", None):
        with pytest.raises(ConfigError) as info:
            make_plan(build_config({"common_args": {"output_dir": str(out)}}), run_id=run_id)
        (problem,) = info.value.problems
        assert f"is inside the {part}/ of the run in {run}" in problem, problem
    assert sorted(tmp_path.rglob("*")) == before  # nothing made


def test_a_users_own_logs_directory_is_not_taken_for_a_run(tmp_path):
    """Only the lock file every run leaves marks a run: a project of the user's with its own
    logs/ and config.yaml may hold output directories."""
    project = tmp_path / "project"
    (project / "logs").mkdir(parents=True)
    (project / "config.yaml").write_text("common_args: {}\n")
    out = project / "logs" / "run1"
    assert make_plan(build_config({"common_args": {"output_dir": str(out)}}), run_id="r1").output_dir == out


def test_a_key_set_to_the_default_it_was_left_to_is_no_difference_on_resume():
    """--resume with `--set train_args.learning_rate=0.05`, the synthetic dataset's default, was
    refused: "learning_rate: None in the checkpoint, 0.05 now", though the run is the same."""
    left_out = make_plan(build_config({"train_args": {"federated_optimizer": "FedAdam"}}))
    recorded = left_out.config_record()
    same = {"learning_rate": left_out.dataset.learning_rate, "batch_size": left_out.dataset.batch_size,
            "beta1": 0.9}
    for key, value in same.items():
        plan = _plan(train_args={"federated_optimizer": "FedAdam", key: value})
        assert plan.result_changing_differences(recorded) == [], key
        assert left_out.result_changing_differences(plan.config_record()) == [], key  # the other way round
    spelled = _plan(train_args={"federated_optimizer": "FedAdam"}, validation_args={"test_batch_size": 16})
    assert spelled.result_changing_differences(recorded) == []
    for key, value in {"learning_rate": 0.06, "batch_size": 8, "beta1": 0.8}.items():
        plan = _plan(train_args={"federated_optimizer": "FedAdam", key: value})
        assert plan.result_changing_differences(recorded) == [(f"train_args.{key}", None, value)]
        assert left_out.result_changing_differences(plan.config_record()) == [(f"train_args.{key}", value, None)]
