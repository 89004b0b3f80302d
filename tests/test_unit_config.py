"""Unit tests of flamby_mpi.config and of the CLI's config-error path (no MPI)."""
import os
import sys
from pathlib import Path

import pytest
import yaml

from flamby_mpi import cli
from flamby_mpi.config import (
    FEDML_KEY_HINTS,
    OPTIMIZER_CHOICES,
    SECTIONS,
    RunConfig,
    build_config,
    describe_options,
    ignored_keys_warning,
    load_config,
    parse_override,
    read_yaml,
)
from flamby_mpi.exit.errors import ConfigError, UserError

REPO = Path(__file__).resolve().parents[1]
CONFIG_DIR = REPO / "config"
FEDML_STYLE_EXAMPLE = Path(__file__).resolve().parent / "configs" / "fedml_style_example.yaml"
RANK_VARIABLES = ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK", "SLURM_PROCID")


def _write(tmp_path, text, name="run.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


# --- defaults -----------------------------------------------------------------------------

def test_runconfig_defaults():
    c = RunConfig()
    assert c.common_args.training_type == "cross_silo"
    assert c.common_args.random_seed == 0
    assert c.common_args.run_id is None
    assert c.common_args.output_dir is None
    assert c.common_args.using_mlops is False
    assert c.data_args.dataset == "synthetic"
    assert c.data_args.data_path is None
    assert c.data_args.debug is False
    assert c.data_args.synthetic_num_centers == 4
    assert c.data_args.synthetic_samples_per_center == 200
    assert c.data_args.num_workers == 0
    assert c.model_args.model == "baseline"
    assert c.train_args.federated_optimizer == "FedAvg"
    assert c.train_args.comm_round is None
    assert c.train_args.num_updates == 100
    assert c.train_args.batch_size is None
    assert c.train_args.learning_rate is None
    assert c.train_args.client_optimizer is None
    assert c.train_args.client_num_in_total is None
    assert c.validation_args.frequency_of_the_test == 5
    assert c.validation_args.pooled_test == "predictions"
    assert c.validation_args.test_batch_size is None
    assert c.device_args.worker_num is None
    assert c.device_args.using_gpu is False
    assert c.comm_args.backend == "MPI"
    assert c.comm_args.round_timeout_s == 1800.0
    assert c.tracking_args.log_level == "warning"
    assert c.tracking_args.enable_wandb is False


def test_empty_mapping_gives_defaults():
    assert build_config({}) == RunConfig()
    # A section present but empty (YAML `train_args:` with nothing under it) is also the default.
    assert build_config({"train_args": None}) == RunConfig()


def test_to_dict_has_every_section():
    d = RunConfig().to_dict()
    assert list(d) == list(SECTIONS)
    assert d["train_args"]["num_updates"] == 100
    assert "train_args:" in RunConfig().to_yaml()


# --- shipped config files -----------------------------------------------------------------

def test_fedml_config_yaml_validates():
    c = load_config(str(CONFIG_DIR / "fedml_config.yaml"))
    assert c.data_args.dataset == "synthetic"
    assert c.data_args.synthetic_num_centers == 4
    assert c.train_args.comm_round == 10
    assert c.train_args.num_updates == 50
    assert c.validation_args.pooled_test == "predictions"
    # round_timeout_s: 600 in the YAML is an int; the float field converts it.
    assert c.comm_args.round_timeout_s == 600.0
    assert isinstance(c.comm_args.round_timeout_s, float)


FLAMBY_CONFIGS = sorted(CONFIG_DIR.glob("fed_*.yaml"))


def test_there_are_flamby_configs():
    assert len(FLAMBY_CONFIGS) >= 7


@pytest.mark.parametrize("path", FLAMBY_CONFIGS, ids=lambda p: p.name)
def test_flamby_config_yaml_validates(path):
    c = load_config(str(path))
    assert c.data_args.dataset == path.stem
    assert c.train_args.num_updates >= 1
    assert c.validation_args.pooled_test in ("predictions", "flamby", "off")


# --- precedence and YAML parsing of --set ---------------------------------------------------

def test_precedence_defaults_file_set(tmp_path):
    path = _write(tmp_path, "train_args:\n  comm_round: 7\n  num_updates: 20\n"
                            "common_args:\n  random_seed: 3\n")
    c = load_config(path, ["train_args.comm_round=3", "validation_args.frequency_of_the_test=2"])
    assert c.train_args.comm_round == 3          # --set beats the file
    assert c.train_args.num_updates == 20        # file beats the default
    assert c.common_args.random_seed == 3        # file
    assert c.validation_args.frequency_of_the_test == 2  # --set beats the default
    assert c.train_args.batch_size is None       # default
    # The last --set of the same key wins.
    c = load_config(path, ["train_args.comm_round=3", "train_args.comm_round=9"])
    assert c.train_args.comm_round == 9


@pytest.mark.parametrize("text, expected", [
    ("train_args.comm_round=3", 3),
    ("train_args.learning_rate=0.25", 0.25),
    ("device_args.using_gpu=true", True),
    ("device_args.using_gpu=false", False),
    ("train_args.batch_size=null", None),
    ("train_args.batch_size=", None),
    ("data_args.dataset=fed_ixi", "fed_ixi"),
    ("data_args.data_path='/a=b'", "/a=b"),
    ("common_args.run_id=\"001\"", "001"),
])
def test_parse_override_values_are_yaml(text, expected):
    section, key, value = parse_override(text)
    assert (section, key) == tuple(text.split("=")[0].split("."))
    assert value == expected
    assert type(value) is type(expected)


def test_set_values_reach_the_config_with_their_types():
    c = build_config({}, ["train_args.learning_rate=0.5", "device_args.using_gpu=true",
                          "train_args.comm_round=4", "train_args.batch_size=null"])
    assert c.train_args.learning_rate == 0.5
    assert c.device_args.using_gpu is True
    assert c.train_args.comm_round == 4
    assert c.train_args.batch_size is None


def test_cli_run_id_stays_a_string():
    # --run_id goes into the plan as typed: ids such as 001 or true are not read as numbers/bools,
    # and the config.yaml written for the run says the same.
    from flamby_mpi.plan import make_plan

    for run_id in ("001", "true", "my run"):
        plan = make_plan(build_config({}), run_id=run_id)
        assert plan.run_id == run_id and str(plan.output_dir) == f"runs/{run_id}"
        assert str(plan.rendezvous_dir) == f"runs/{run_id}/rendezvous"
        assert build_config(yaml.safe_load(plan.config_yaml())).common_args.run_id == run_id


@pytest.mark.parametrize("text", [
    "train_args.comm_round",     # no '='
    "comm_round=3",              # no section
    ".comm_round=3",             # empty section
    "train_args.=3",             # empty key
    "=3",
])
def test_bad_set_syntax_is_a_user_error(text):
    with pytest.raises(UserError) as info:
        parse_override(text)
    assert not isinstance(info.value, ConfigError)
    assert "section.key=value" in str(info.value)
    with pytest.raises(UserError):
        build_config({}, [text])


def test_set_value_that_is_not_yaml_is_a_user_error():
    with pytest.raises(UserError, match="not valid YAML"):
        parse_override("train_args.comm_round=[1")


# --- all problems reported together -----------------------------------------------------------

def test_every_problem_is_reported_in_one_error():
    raw = {
        "bogus_section": {"a": 1},
        "train_args": {"epochs": 3, "nonsense": 1, "num_updates": "many", "comm_round": 0},
        "tracking_args": {"log_level": "loud"},
    }
    with pytest.raises(ConfigError) as info:
        build_config(raw)
    err = info.value
    problems = err.problems
    assert len(problems) == 6, problems
    text = str(err)
    assert "6 problem(s)" in text

    def one(fragment):
        hits = [p for p in problems if fragment in p]
        assert len(hits) == 1, (fragment, problems)
        return hits[0]

    section = one("bogus_section")
    assert "unknown section" in section
    for name in SECTIONS:
        assert name in section
    epochs = one("train_args.epochs")
    assert "num_updates" in epochs and epochs.endswith(FEDML_KEY_HINTS["epochs"])
    nonsense = one("train_args.nonsense")
    assert "valid keys in train_args" in nonsense
    for key in ("federated_optimizer", "comm_round", "num_updates", "batch_size", "learning_rate",
                "client_optimizer"):
        assert key in nonsense
    wrong_type = one("train_args.num_updates:")
    assert "expected an integer" in wrong_type and "'many'" in wrong_type
    too_small = one("train_args.comm_round")
    assert "must be in [1, 1000000000]" in too_small and "got 0" in too_small
    choice = one("tracking_args.log_level")
    assert "'loud'" in choice and "valid choices: debug, info, warning, error" in choice
    # Every problem also appears in the printed message.
    for p in problems:
        assert p in text


def test_a_message_shows_the_first_20_problems():
    with pytest.raises(ConfigError) as info:
        build_config({"train_args": {f"unknown_{i}": i for i in range(20000)}})
    assert len(info.value.problems) == 20000
    lines = str(info.value).splitlines()
    assert lines[0] == "invalid configuration (20000 problem(s)):" and len(lines) == 22
    assert lines[20].startswith("  - unknown key train_args.unknown_19;") and lines[21] == "  - ... and 19980 more"


def test_problems_from_file_and_set_are_reported_together(tmp_path):
    path = _write(tmp_path, "train_args:\n  epochs: 3\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, ["comm_args.round_timeout_s=0.5", "model_args.model=resnet"])
    assert len(info.value.problems) == 3
    joined = "\n".join(info.value.problems)
    assert "train_args.epochs" in joined
    assert "comm_args.round_timeout_s: must be in [1, 1000000000], got 0.5" in joined
    assert "valid choices: baseline" in joined


def test_section_that_is_not_a_mapping():
    with pytest.raises(ConfigError) as info:
        build_config({"train_args": 5, "device_args": ["x"]})
    assert len(info.value.problems) == 2
    assert all("must be a mapping" in p for p in info.value.problems)


def test_keys_that_are_not_strings_are_unknown_keys(tmp_path):
    # Were AttributeError tracebacks (is_ignored_key called str.startswith on them).
    path = _write(tmp_path, "train_args:\n  1: 2\n  null: 3\n  2.5: 5\n  2026-11-28: 6\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert [p.partition(";")[0] for p in info.value.problems] == [
        f"unknown key train_args.{k}" for k in ("1", "None", "2.5", "2026-11-28")]
    with pytest.raises(ConfigError, match="unknown key train_args.True"):
        build_config({"train_args": {True: 1}})


@pytest.mark.parametrize("key", ["common_args.output_dir", "data_args.data_path", "comm_args.rendezvous_dir",
                                 "comm_args.secret_file", "device_args.gpu_mapping_file"])
def test_a_path_with_a_nul_is_refused(key):
    section, _, name = key.partition(".")
    with pytest.raises(ConfigError, match=f"{key}: a path cannot contain a NUL character"):
        build_config({section: {name: "runs/a\0b"}})
    assert getattr(getattr(build_config({section: {name: "runs/\u00e9t\u00e9 \u202e"}}), section), name)


def test_keys_written_without_their_section_say_where_they_belong(tmp_path):
    # Were "section 'comm_round' must be a mapping of keys".
    with pytest.raises(ConfigError) as info:
        load_config(_write(tmp_path, "comm_round: 3\ndataset: synthetic\nfedml_args: 1\n"),
                    ["fedml_args.x=1"])
    assert info.value.problems == [
        "unknown section 'comm_round': it is a key of train_args; write it under train_args: "
        "(or --set train_args.comm_round=...)",
        "unknown section 'dataset': it is a key of data_args; write it under data_args: "
        "(or --set data_args.dataset=...)",
        "unknown section 'fedml_args'; valid sections: " + ", ".join(SECTIONS)]


def test_bool_choice_is_shown_in_yaml_spelling():
    with pytest.raises(ConfigError) as info:
        build_config({"common_args": {"using_mlops": True}})
    assert "valid choices: false" in info.value.problems[0]


# --- keys of other tools' configs ----------------------------------------------------------------

WARNING_PREFIX = "flamby-mpi: warning: ignoring keys that have no effect here: "


def test_keys_without_effect_here_are_ignored_and_recorded_in_order():
    raw = {"data_args": {"data_cache_dir": "~/fedml_data", "partition_method": "hetero",
                         "partition_alpha": 0.5, "preprocessed": False},
           "train_args": {"client_id_list": "[]", "comm_round": 3},
           "comm_args": {"is_mobile": 0},
           "tracking_args": {"log_file_dir": "./log", "enable_wandb": False, "wandb_key": "k",
                             "wandb_project": "p", "wandb_name": "n", "wandb_entity": "e"}}
    c = build_config(raw, ["data_args.partition_alpha=0.1", "train_args.client_id_list=[1, 2]"])
    assert c.train_args.comm_round == 3
    assert c.ignored_keys == (
        "data_args.data_cache_dir", "data_args.partition_method", "data_args.partition_alpha",
        "data_args.preprocessed", "train_args.client_id_list", "comm_args.is_mobile",
        "tracking_args.log_file_dir", "tracking_args.wandb_key", "tracking_args.wandb_project",
        "tracking_args.wandb_name", "tracking_args.wandb_entity")
    assert ignored_keys_warning(c) == WARNING_PREFIX + ", ".join(c.ignored_keys)
    # No part of the resolved config: config.yaml and equality are what they were.
    assert c == build_config({"train_args": {"comm_round": 3}})
    assert "wandb_key" not in c.to_yaml() and "partition" not in c.to_yaml()


def test_no_ignored_keys_no_warning():
    assert build_config({}).ignored_keys == ()
    assert ignored_keys_warning(build_config({})) is None
    assert ignored_keys_warning(load_config(str(CONFIG_DIR / "fedml_config.yaml"))) is None


def test_ignored_keys_are_still_only_accepted_in_known_sections():
    with pytest.raises(ConfigError) as info:
        build_config({"fedml_args": {"data_cache_dir": ""}})
    assert "unknown section 'fedml_args'" in info.value.problems[0]


@pytest.mark.parametrize("raw, fragment, advice", [
    ({"train_args": {"epochs": 1}}, "unknown key train_args.epochs", "use train_args.num_updates"),
    ({"common_args": {"training_type": "simulation"}}, "common_args.training_type: 'simulation'",
     "valid choices: cross_silo"),
    ({"model_args": {"model": "lr"}}, "model_args.model: 'lr'", "valid choices: baseline"),
    ({"tracking_args": {"enable_wandb": True, "wandb_key": "k"}}, "tracking_args.enable_wandb",
     "valid choices: false"),
])
def test_keys_whose_meaning_cannot_be_honoured_stay_errors(raw, fragment, advice):
    with pytest.raises(ConfigError) as info:
        build_config(raw)
    assert len(info.value.problems) == 1, info.value.problems
    assert fragment in info.value.problems[0] and advice in info.value.problems[0]


def test_fedml_style_config_says_what_to_fix():
    """A FedML-style config (the keys FLamby's FedML integration uses): only what cannot be
    honoured is an error, each with advice."""
    with pytest.raises(ConfigError) as info:
        load_config(str(FEDML_STYLE_EXAMPLE))
    problems = info.value.problems
    assert len(problems) == 3, problems
    joined = "\n".join(problems)
    assert "common_args.training_type: 'simulation' is not supported; valid choices: cross_silo" in joined
    assert "model_args.model: 'lr' is not supported; valid choices: baseline" in joined
    assert "unknown key train_args.epochs; " + FEDML_KEY_HINTS["epochs"] in joined


def _fedml_style_fixed(dataset="synthetic"):
    """FLamby's example with its errors fixed as the messages say (synthetic: FLamby's 4 centres
    without FLamby installed)."""
    raw = yaml.safe_load(FEDML_STYLE_EXAMPLE.read_text())
    raw["common_args"]["training_type"] = "cross_silo"
    raw["model_args"]["model"] = "baseline"
    del raw["train_args"]["epochs"]
    raw["data_args"]["dataset"] = dataset
    return raw


def test_fedml_style_config_once_fixed_lists_the_ignored_keys():
    from flamby_mpi.plan import make_plan

    c = build_config(_fedml_style_fixed())
    assert c.ignored_keys == (
        "data_args.data_cache_dir", "data_args.partition_method", "data_args.partition_alpha",
        "data_args.preprocessed", "train_args.client_id_list", "comm_args.is_mobile",
        "tracking_args.log_file_dir", "tracking_args.wandb_key", "tracking_args.wandb_project",
        "tracking_args.wandb_name")
    assert c.train_args.weight_decay == 0.0
    # client_num_in_total: 1000 needs the dataset to be found wrong: the plan says what to write.
    with pytest.raises(ConfigError, match="train_args.client_num_in_total: synthetic has 4 centres, "
                                          "so this must be 4"):
        make_plan(c)
    raw = _fedml_style_fixed()
    raw["train_args"]["client_num_in_total"] = 4
    plan = make_plan(build_config(raw))
    assert (plan.num_clients, plan.rounds, plan.batch_size, plan.weight_decay) == (4, 10, 10, 0.0)


def test_fedml_style_config_once_fixed_runs_with_one_warning(tmp_path):
    """The whole program, in process (no MPI): exit 0, results written, one warning line."""
    import json
    import subprocess

    from support.mpi import LAUNCHER
    from support.mpi import test_env as job_env  # aliased: pytest would collect test_env

    raw = _fedml_style_fixed()
    raw["train_args"]["client_num_in_total"] = 4
    path = _write(tmp_path, yaml.safe_dump(raw, sort_keys=False), name="flamby_example_fixed.yaml")
    home = tmp_path / "home"
    home.mkdir()
    done = subprocess.run(
        [sys.executable, str(LAUNCHER), "--cf", path, "--run_id", "flamby_example",
         "--set", "comm_args.backend=inprocess", "--set", "train_args.num_updates=10",
         "--set", f"common_args.output_dir={tmp_path / 'out'}"],
        cwd=tmp_path, env=job_env(home), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    warnings = [line for line in (done.stdout + done.stderr).splitlines() if "warning" in line]
    assert warnings == [WARNING_PREFIX + ", ".join(build_config(raw).ignored_keys)], warnings
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results["rounds_completed"] == 10 and results["weight_decay"] == 0.0


def test_cli_warns_about_ignored_keys_once_from_rank_0(tmp_path, capsys, monkeypatch, no_rank_env):
    # worker_num: 3 stops the run at the plan, after the warning and before any MPI.
    path = _write(tmp_path, "data_args:\n  partition_method: hetero\ndevice_args:\n  worker_num: 3\n"
                            "tracking_args:\n  wandb_key: k\n")
    expected = WARNING_PREFIX + "data_args.partition_method, tracking_args.wandb_key"
    assert cli.main(["--cf", path]) == 2
    err = capsys.readouterr().err
    assert err.splitlines()[0] == expected and err.count("warning") == 1
    monkeypatch.setenv("PMI_RANK", "3")  # another rank of the same mpirun job: silent
    assert cli.main(["--cf", path]) == 2
    assert capsys.readouterr().err == ""
    monkeypatch.setenv("PMI_RANK", "0")
    assert cli.main(["--cf", path]) == 2
    assert capsys.readouterr().err.splitlines()[0] == expected


def test_cli_separately_started_ranks_warn_once(tmp_path, capsys, monkeypatch, no_rank_env):
    """One process per terminal: the server warns after its re-exec under mpiexec, clients never."""
    from flamby_mpi.launch import separate

    path = _write(tmp_path, "comm_args:\n  is_mobile: 0\ndevice_args:\n  worker_num: 3\n")
    monkeypatch.delenv(separate.REEXEC_MARKER, raising=False)
    for rank, role in ((0, "server"), (1, "client")):  # before the re-exec: nobody
        assert cli.main(["--cf", path, "--run_id", "r", "--rank", str(rank), "--role", role]) == 2
        assert "warning" not in capsys.readouterr().err
    monkeypatch.setenv(separate.REEXEC_MARKER, "1")
    monkeypatch.setenv("PMI_RANK", "0")  # as `mpiexec -n 1` announces every re-executed rank
    assert cli.main(["--cf", path, "--run_id", "r", "--rank", "1", "--role", "client"]) == 2
    assert "warning" not in capsys.readouterr().err
    assert cli.main(["--cf", path, "--run_id", "r", "--rank", "0", "--role", "server"]) == 2
    assert capsys.readouterr().err.splitlines()[0] == WARNING_PREFIX + "comm_args.is_mobile"


# --- train_args.weight_decay ---------------------------------------------------------------------

def test_weight_decay_is_a_train_arg():
    assert build_config({}).train_args.weight_decay is None
    c = build_config({"train_args": {"weight_decay": 0.001}})
    assert c.train_args.weight_decay == 0.001
    assert build_config({}, ["train_args.weight_decay=1e-4"]).train_args.weight_decay == 0.0001
    with pytest.raises(ConfigError, match=r"train_args.weight_decay: must be in \[0, 3.4028234663852886e\+38\]"):
        build_config({"train_args": {"weight_decay": -0.1}})


# --- types ----------------------------------------------------------------------------------

@pytest.mark.parametrize("value, expected", [(True, "predictions"), (False, "off"),
                                             ("flamby", "flamby"), ("off", "off")])
def test_pooled_test_accepts_booleans(value, expected):
    c = build_config({"validation_args": {"pooled_test": value}})
    assert c.validation_args.pooled_test == expected


def test_pooled_test_bad_choice_lists_choices():
    with pytest.raises(ConfigError) as info:
        build_config({"validation_args": {"pooled_test": "yes"}})
    problem = info.value.problems[0]
    assert "'yes' is not supported; valid choices: predictions, flamby, " in problem
    assert problem.endswith("off") or problem.endswith("'off'")  # YAML spelling of the string off


def test_int_for_float_field_is_converted():
    c = build_config({"train_args": {"learning_rate": 1}, "comm_args": {"round_timeout_s": 60}})
    assert c.train_args.learning_rate == 1.0 and type(c.train_args.learning_rate) is float
    assert c.comm_args.round_timeout_s == 60.0 and type(c.comm_args.round_timeout_s) is float


@pytest.mark.parametrize("section, key", [("train_args", "comm_round"), ("train_args", "num_updates"),
                                          ("common_args", "random_seed"),
                                          ("train_args", "learning_rate")])
def test_bool_is_rejected_for_numeric_fields(section, key):
    with pytest.raises(ConfigError) as info:
        build_config({section: {key: True}})
    assert len(info.value.problems) == 1
    assert f"{section}.{key}: expected" in info.value.problems[0]
    assert "got True" in info.value.problems[0]


def test_float_is_rejected_for_int_field_and_int_for_bool_field():
    with pytest.raises(ConfigError) as info:
        build_config({"train_args": {"num_updates": 2.5}, "device_args": {"using_gpu": 1}})
    joined = "\n".join(info.value.problems)
    assert "train_args.num_updates: expected an integer, got 2.5" in joined
    assert "device_args.using_gpu: expected true or false, got 1" in joined


def test_string_field_rejects_numbers():
    with pytest.raises(ConfigError) as info:
        build_config({"common_args": {"run_id": 42}})
    assert "expected a string or null" in info.value.problems[0]


def test_huge_values_are_shown_short(tmp_path):
    """An alias bomb (10**10 items once expanded) took minutes to print; a megabyte string or a run
    id of 100000 characters made a message as long."""
    anchors = "data_args:\n  data_cache_dir: &a0 [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"  wandb_{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]\n" for i in range(1, 9))
    path = _write(tmp_path, anchors + "train_args:\n  comm_round: [" + ", ".join(["*a8"] * 10) + "]\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert "train_args.comm_round: expected an integer or null, got [[[" in str(info.value)
    assert len(str(info.value)) < 400
    with pytest.raises(ConfigError, match=r"must be in \[0, 9223372036854775807\] .*, got a negative integer of "
                                          "5000 digits"):
        build_config({"common_args": {"random_seed": -10**4999}})
    with pytest.raises(ConfigError) as info:
        build_config({"common_args": {"run_id": "r" * 100000}})
    assert "cannot name files" in str(info.value) and len(str(info.value)) < 400


def test_a_newline_in_a_key_or_a_path_does_not_make_a_second_message(tmp_path, capsys, no_rank_env):
    injected = "x\nflamby-mpi: error: injected"
    for argv in (["--cf", _write(tmp_path, yaml.safe_dump({"train_args": {injected: 1}}), "key.yaml")],
                 ["--cf", _write(tmp_path, "{}\n", "set.yaml"), "--set", f"train_args.{injected}=1"],
                 ["--cf", str(tmp_path / injected)]):
        assert cli.main(argv) == 2
        err = capsys.readouterr().err
        assert len(_error_lines(err)) == 1 and "x\\nflamby-mpi: error: injected'" in err, err


def test_optional_fields_accept_null():
    c = build_config({"train_args": {"comm_round": None, "learning_rate": None}})
    assert c.train_args.comm_round is None and c.train_args.learning_rate is None


def test_an_integer_beyond_any_float_is_a_user_error():
    # Was an OverflowError traceback (float() of the int).
    with pytest.raises(ConfigError, match="comm_args.round_timeout_s: expected a number, got an integer of "
                                          "400 digits"):
        build_config({}, ["comm_args.round_timeout_s=" + "9" * 400])


@pytest.mark.parametrize("text", [".nan", ".NaN", ".inf", "-.inf", "1e400", "1.0e400", "nan", "inf", "-Infinity"])
def test_floats_must_be_finite(text):
    # NaN passed every minimum (nan < 1 is false): a NaN round_timeout_s switched the watchdog off.
    with pytest.raises(ConfigError, match="comm_args.round_timeout_s: must be a finite number, got"):
        build_config({}, [f"comm_args.round_timeout_s={text}"])


@pytest.mark.parametrize("key, value, maximum", [
    ("data_args.synthetic_num_centers", 10**9, 10_000), ("data_args.synthetic_samples_per_center", 10**12, 10**7),
    ("data_args.num_workers", 10**9, 1024), ("device_args.cpu_threads", 2**31, 1024),
    ("comm_args.round_timeout_s", 1e300, 10**9), ("comm_args.join_timeout_s", 1e12, 10**9),
])
def test_numbers_no_run_can_use_are_refused(key, value, maximum):
    # They passed the config and hung the plan (10**9 synthetic centres) or failed the run later
    # (memory, torch.set_num_threads, DataLoader workers, threading.Timer overflow).
    with pytest.raises(ConfigError, match=rf"{key}: must be in \[\d+, {maximum}\], got "):
        build_config({}, [f"{key}={value}"])
    section, _, name = key.partition(".")
    assert getattr(getattr(build_config({}, [f"{key}={maximum}"]), section), name) == maximum


def _bounded_fields():
    import dataclasses
    import typing

    for section, cls in typing.get_type_hints(RunConfig).items():
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            tp = hints[f.name]
            tp = [a for a in typing.get_args(tp) if a is not type(None)][0] if typing.get_args(tp) else tp
            if tp in (int, float):
                yield section, f, tp


BOUNDED = list(_bounded_fields())


def test_every_number_in_the_config_has_both_bounds():
    """Anything an int or a float ends up in torch, range(), islice, a timer or a file name: with
    no upper bound, 10**19 or 1e300 passed the schema and crashed the run (issue 18)."""
    assert len(BOUNDED) >= 29
    for section, f, _ in BOUNDED:
        assert f.metadata["minimum"] is not None and f.metadata["maximum"] is not None, f"{section}.{f.name}"


@pytest.mark.parametrize("section, f, tp", BOUNDED, ids=[f"{s}.{f.name}" for s, f, _ in BOUNDED])
def test_each_bound_is_where_its_range_says(section, f, tp):
    """The last value on each side passes; one step past it is refused naming the key and the range
    the message and --help print ([a, b] includes a bound, (a, b) excludes it)."""
    import math

    from flamby_mpi.config import bounds_text

    key, text = f"{section}.{f.name}", bounds_text(f.metadata)
    low, high = f.metadata["minimum"], f.metadata["maximum"]
    step_up = (lambda x: x + 1) if tp is int else (lambda x: math.nextafter(x, math.inf))
    step_down = (lambda x: x - 1) if tp is int else (lambda x: math.nextafter(x, -math.inf))
    inside = [step_up(low) if f.metadata["above"] else low, step_down(high) if f.metadata["below"] else high]
    outside = [low if f.metadata["above"] else step_down(low), high if f.metadata["below"] else step_up(high)]
    assert text.startswith("(" if f.metadata["above"] else "[") and (")" if f.metadata["below"] else "]") in text
    for value in inside:
        config = build_config({section: {f.name: value}})
        assert getattr(getattr(config, section), f.name) == value
    for value in outside:
        with pytest.raises(ConfigError) as info:
            build_config({section: {f.name: value}})
        assert info.value.problems == [f"{key}: must be in {text}, got {value!r}"]
    assert f"{key} (" in describe_options() and f"range {text}" in describe_options()


def test_float32_bounds_are_torchs():
    import torch

    from flamby_mpi.config import FLOAT32_MAX, FLOAT32_SMALLEST

    assert FLOAT32_MAX == torch.finfo(torch.float32).max
    assert FLOAT32_SMALLEST == 2.0 ** -149
    assert torch.tensor(FLOAT32_SMALLEST, dtype=torch.float32).item() > 0
    assert torch.tensor(FLOAT32_SMALLEST * 0.49, dtype=torch.float32).item() == 0  # a tau this small is 0
    parameter = torch.ones(1)
    parameter.add_(torch.ones(1), alpha=-FLOAT32_MAX)  # the largest learning rate is used as it is
    with pytest.raises(RuntimeError, match="overflow"):  # what 1e39 did at the first step
        parameter.add_(torch.ones(1), alpha=-1e39)


def test_seed_bound_is_what_torch_and_numpy_take():
    import numpy as np
    import torch

    from flamby_mpi.config import MAX_SEED
    from flamby_mpi.federation.training import derived_seed

    assert MAX_SEED == 2**63 - 1
    with torch.random.fork_rng():  # the global generator is left as it was for other tests
        torch.manual_seed(MAX_SEED)
        with pytest.raises(ValueError, match="Overflow"):  # what 2**64 did on rank 0
            torch.manual_seed(2**64)
    torch.Generator().manual_seed(MAX_SEED)
    np.random.default_rng([MAX_SEED, 0x5A])
    assert 0 <= derived_seed(MAX_SEED, 4) < 2**32
    with pytest.raises(ConfigError, match=r"common_args.random_seed: must be in \[0, 9223372036854775807\]"):
        build_config({"common_args": {"random_seed": 2**63}})


def test_count_bound_is_within_what_a_loader_takes():
    import itertools

    import torch

    from flamby_mpi.config import MAX_COUNT

    assert MAX_COUNT <= min(sys.maxsize, 2**31 - 1)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.arange(5)), batch_size=MAX_COUNT)
    assert [len(batch[0]) for batch in loader] == [5]  # one batch of the whole set
    with pytest.raises(ValueError, match="islice"):  # what batch_size 10**19 did
        list(itertools.islice(range(3), 10**19))


# --- run ids in bytes -----------------------------------------------------------------------------

def test_run_ids_are_bounded_in_bytes_not_characters():
    from flamby_mpi.config import max_run_id_bytes, run_id_problem

    assert max_run_id_bytes() == 255 - len(".alive.2147483647") - len("..0123456789abcdef.tmp") == 216
    assert run_id_problem("r" * 200) is None and run_id_problem("\u00e9" * 108) is None  # 216 bytes
    for run_id, size in (("\u00e9" * 130, 260), ("\u00e9" * 109, 218), ("\u00e9" * 108 + "a", 217),
                         ("\u4e2d" * 73, 219)):  # 73 characters of 3 bytes
        problem = run_id_problem(run_id)
        assert problem and f"it is {size} bytes" in problem and "at most 216 bytes" in problem, problem
    with pytest.raises(ConfigError, match="common_args.run_id: run id .* it is 260 bytes"):
        build_config({"common_args": {"run_id": "\u00e9" * 130}})


def _derived_names_of(directory: Path, run_id: str):
    """Every file the project names after a run id, from the code that names them."""
    from flamby_mpi.launch.liveness import Liveness
    from flamby_mpi.launch.rendezvous import RendezvousFiles

    files = RendezvousFiles(directory, run_id)
    paths = [getattr(files, name) for name in dir(RendezvousFiles)
             if isinstance(getattr(RendezvousFiles, name), property)]
    assert {p.name for p in paths} >= {f"{run_id}.json", f"{run_id}.secret", f"{run_id}.connecting"}
    paths.append(Liveness(files, "s" * 32, "port", rank=2**31 - 1, size=2**31).path(2**31 - 1))
    return paths


def test_every_file_named_after_the_longest_run_id_can_be_made(tmp_path):
    """The bound is the longest derived name: for the longest run id allowed (216 bytes), every name
    the code derives, under the temporary names it is written through, is made on a real file
    system; one byte more and the longest of them is "File name too long" (it was, for 130 'é')."""
    import errno

    from flamby_mpi.config import max_run_id_bytes, run_id_problem
    from flamby_mpi.launch import rendezvous
    from flamby_mpi.storage import safe_files

    longest = "\u00e9" * 108
    assert len(os.fsencode(longest)) == max_run_id_bytes() and run_id_problem(longest) is None
    (tmp_path / "runs" / longest).mkdir(parents=True)  # the output directory runs/<run_id>
    for path in _derived_names_of(tmp_path / "rendezvous", longest):
        safe_files.write_atomic(path.parent, path.name, b"{}")  # through .<name>.<16 hex>.tmp
        rendezvous._private_copy_beside(path, "{}")[0].unlink()  # through .<name>.<12 hex>
        assert path.exists()
    one_more = longest + "a"
    assert run_id_problem(one_more) is not None
    alive = max(_derived_names_of(tmp_path / "more", longest), key=lambda p: len(p.name))
    with pytest.raises(OSError) as info:
        safe_files.write_atomic(tmp_path / "more", alive.name.replace(longest, one_more), b"{}")
    assert info.value.errno == errno.ENAMETOOLONG


def test_exponent_notation_learning_rate_is_accepted():
    c = build_config({}, ["train_args.learning_rate=1e-3"])
    assert c.train_args.learning_rate == pytest.approx(0.001)


# --- files ----------------------------------------------------------------------------------

def test_missing_file_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="config file not found") as info:
        load_config(str(tmp_path / "nope.yaml"))
    assert "--cf" in str(info.value)


def test_cf_that_is_not_a_regular_file_is_a_user_error(tmp_path):
    os.mkfifo(tmp_path / "fifo")  # opened without waiting for a writer, then refused
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    for path, fragment in ((tmp_path, "is a directory"), (tmp_path / "fifo", "is not a regular file"),
                           ("/dev/null", "is not a regular file"),
                           (tmp_path / "loop", "cannot open config file"),
                           ("x" * 5000, "cannot open config file"),  # name too long: was an OSError
                           ("a\0b", "cannot open config file")):
        with pytest.raises(UserError, match=fragment) as info:
            read_yaml(str(path))
        assert "--cf" in str(info.value)


def test_files_over_10_mb_are_refused_before_they_are_read(tmp_path, monkeypatch):
    from flamby_mpi import config

    assert config.MAX_CONFIG_BYTES == 10_000_000
    path = tmp_path / "big.yaml"
    with open(path, "wb") as file:  # valid YAML: refused for its size alone
        file.write(b"train_args: {}\n#")
        file.truncate(config.MAX_CONFIG_BYTES + 1)
    monkeypatch.setattr(yaml, "safe_load", None)  # never parsed
    monkeypatch.setattr(yaml, "load", None)
    with pytest.raises(UserError, match=r"is 10000001 bytes, over the limit of 10 MB"):
        read_yaml(str(path))
    os.truncate(path, 2**40)  # a sparse terabyte: never read either
    with pytest.raises(UserError, match=r"is 1099511627776 bytes"):
        read_yaml(str(path))


@pytest.mark.parametrize("text", ["- a\n- b\n", "just a string\n", "42\n"])
def test_non_mapping_yaml_is_a_user_error(tmp_path, text):
    with pytest.raises(UserError, match="top level must be a mapping") as info:
        read_yaml(_write(tmp_path, text))
    assert not isinstance(info.value, ConfigError)


def test_invalid_yaml_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="not valid YAML"):
        read_yaml(_write(tmp_path, "train_args: [1, 2\n"))


@pytest.mark.parametrize("text, message", [
    ("train_args:\n  comm_round: 3\n  num_updates: 5\n  comm_round: 4\n",
     "the key 'comm_round' is given twice (first at line 2) at line 4, column 3"),
    ("train_args:\n  comm_round: 3\ndata_args: {}\ntrain_args:\n  num_updates: 5\n",
     "the key 'train_args' is given twice (first at line 1) at line 4, column 1"),
    ("train_args: {comm_round: 3, comm_round: 3}\n",
     "the key 'comm_round' is given twice (first at line 1) at line 1, column 29"),
])
def test_a_key_given_twice_is_refused(tmp_path, text, message):
    # PyYAML keeps the last one silently: the first train_args section above was lost.
    with pytest.raises(UserError) as info:
        read_yaml(_write(tmp_path, text))
    assert str(info.value).endswith(f"is not valid YAML: {message}")


def test_merge_keys_may_still_be_overridden(tmp_path):
    text = "defaults: &d {comm_round: 3, num_updates: 5}\ntrain_args:\n  <<: *d\n  comm_round: 4\n"
    assert read_yaml(_write(tmp_path, text))["train_args"] == {"comm_round": 4, "num_updates": 5}
    with pytest.raises(UserError, match="the key 'a' is given twice"):
        parse_override("train_args.comm_round={a: 1, a: 2}")
    with pytest.raises(UserError, match="expected a mapping node, but found sequence"):
        read_yaml(_write(tmp_path, "train_args: !!set [comm_round]\n"))


@pytest.mark.parametrize("text, message", [
    ("train_args: [1, 2\n", "expected ',' or ']', but got '<stream end>' (while parsing a flow sequence) "
                            "at line 2, column 1"),
    ("train_args:\n\tcomm_round: 3\n", "found character '\\t' that cannot start any token (while scanning "
                                       "for the next token) at line 2, column 1"),
    ("a: 1\n---\nb: 2\n", "expected a single document in the stream, but found another document at line 2, "
                          "column 1"),
    ("train_args:\n  comm_round: !!python/object/apply:os.system ['touch pwned']\n",
     "the tag '!!python/object/apply:os.system' is not allowed (a config holds plain YAML values, without "
     "tags) at line 2, column 15"),
    ("train_args:\n  comm_round: 3\x07\n", "character '\\x07' (U+0007) is not allowed in YAML, at line 2, "
                                          "column 16"),
])
def test_a_yaml_error_is_one_line_saying_where(tmp_path, text, message):
    # PyYAML's own text quotes the line and draws a caret under it, on several lines.
    with pytest.raises(UserError) as info:
        read_yaml(_write(tmp_path, text))
    assert str(info.value) == f"{tmp_path / 'run.yaml'} is not valid YAML: {message}"
    assert not (tmp_path / "pwned").exists() and not Path("pwned").exists()


@pytest.mark.parametrize("data, fragment", [
    (bytes([0x94, 0x41, 0xff]), "is not UTF-8 text (byte 0x94 on line 1)"),
    ("common_args:\n  run_id: caf\xe9\n".encode("latin-1"), "is not UTF-8 text (byte 0xe9 on line 2)"),
    (b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR", "is a binary file (it contains NUL bytes)"),
    ("train_args: {}\n".encode("utf-16"), "is UTF-16 or UTF-32 text"),
])
def test_a_file_that_is_not_utf8_text_is_a_user_error(tmp_path, data, fragment):
    path = tmp_path / "run.yaml"
    path.write_bytes(data)
    with pytest.raises(UserError) as info:
        read_yaml(str(path))
    assert fragment in str(info.value)


def test_a_utf8_bom_is_fine(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_bytes(b"\xef\xbb\xbftrain_args:\n  comm_round: 3\n")
    assert read_yaml(str(path)) == {"train_args": {"comm_round": 3}}


@pytest.mark.parametrize("text, fragment", [
    ("train_args:\n  comm_round: !!int three\n", "'three' is not a valid !!int value"),
    ("device_args:\n  using_gpu: !!bool maybe\n", "'maybe' is not a valid !!bool value"),
    ("common_args:\n  run_id: !!timestamp 2026-13-45\n", "'2026-13-45' is not a valid !!timestamp value"),
    ("train_args:\n  comm_round: " + "[" * 5000 + "]" * 5000 + "\n", "nested too deeply"),
    ("train_args:\n  comm_round: " + "9" * 5000 + "\n", "an integer of 5000 digits, more than Python reads"),
])
def test_yaml_that_cannot_be_built_is_a_user_error(tmp_path, text, fragment):
    # These were tracebacks (ValueError, KeyError, RecursionError) from inside PyYAML.
    with pytest.raises(UserError, match="not valid YAML") as info:
        read_yaml(_write(tmp_path, text))
    assert fragment in str(info.value)
    with pytest.raises(UserError, match="not valid YAML"):
        parse_override("train_args.comm_round=" + text.rstrip().rpartition(": ")[2])


@pytest.mark.parametrize("text, fragment", [
    ("", "is empty"), (" \n\t\n", "is empty"), ("\ufeff", "is empty"),
    ("# train_args:\n#   comm_round: 3\n", "has no settings"), ("---\n", "has no settings"),
    ("null\n", "has no settings"),
])
def test_an_empty_file_is_a_user_error(tmp_path, text, fragment):
    with pytest.raises(UserError) as info:
        load_config(_write(tmp_path, text))
    assert fragment in str(info.value) and "config/fedml_config.yaml" in str(info.value)


def test_an_empty_mapping_gives_defaults(tmp_path):
    assert load_config(_write(tmp_path, "{}\n")) == RunConfig()


def test_describe_options_lists_every_key():
    text = describe_options()
    for section, cls in RunConfig().to_dict().items():
        for key in cls:
            assert f"{section}.{key} " in text
    assert "choices: " + ", ".join(OPTIMIZER_CHOICES) not in text  # client_optimizer is free text
    assert "train_args.num_updates (an integer, default 100)" in text


# --- the CLI's user-error path (returns before MPI is touched) ----------------------------------

@pytest.fixture
def no_rank_env(monkeypatch):
    for name in RANK_VARIABLES:
        monkeypatch.delenv(name, raising=False)


def _error_lines(err):
    return [line for line in err.splitlines() if line.startswith("flamby-mpi: error")]


def test_cli_invalid_config_exits_2_with_one_error_line(tmp_path, capsys, no_rank_env):
    mpi_loaded = "mpi4py.MPI" in sys.modules
    path = _write(tmp_path, "train_args:\n  epochs: 3\n  comm_round: 0\n")
    assert cli.main(["--cf", path]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert len(_error_lines(err)) == 1
    assert "invalid configuration (2 problem(s))" in err
    assert "train_args.epochs" in err and "train_args.comm_round" in err
    if not mpi_loaded:
        assert "mpi4py.MPI" not in sys.modules


def test_cli_bad_set_and_missing_file_exit_2(tmp_path, capsys, no_rank_env):
    assert cli.main(["--cf", str(tmp_path / "missing.yaml")]) == 2
    _, err = capsys.readouterr()
    assert len(_error_lines(err)) == 1 and "config file not found" in err
    path = _write(tmp_path, "{}\n")
    assert cli.main(["--cf", path, "--set", "comm_round=3"]) == 2
    _, err = capsys.readouterr()
    assert len(_error_lines(err)) == 1 and "section.key=value" in err


def test_cli_plan_mismatch_exits_2_before_mpi(tmp_path, capsys, no_rank_env):
    mpi_loaded = "mpi4py.MPI" in sys.modules
    path = _write(tmp_path, "device_args:\n  worker_num: 3\n")
    assert cli.main(["--cf", path]) == 2
    _, err = capsys.readouterr()
    assert len(_error_lines(err)) == 1
    assert "device_args.worker_num" in err and "must be 4" in err
    if not mpi_loaded:
        assert "mpi4py.MPI" not in sys.modules


def test_cli_error_is_printed_by_rank_0_only(tmp_path, capsys, monkeypatch, no_rank_env):
    path = _write(tmp_path, "train_args:\n  epochs: 3\n")
    monkeypatch.setenv("PMI_RANK", "2")
    assert cli.main(["--cf", path]) == 2
    assert capsys.readouterr().err == ""
    monkeypatch.setenv("PMI_RANK", "0")
    assert cli.main(["--cf", path]) == 2
    assert len(_error_lines(capsys.readouterr().err)) == 1


def test_build_parser():
    args = cli.build_parser().parse_args(["--cf", "x.yaml", "--set", "a.b=1", "--set", "c.d=2",
                                          "--rank", "1", "--role", "client", "--run_id", "r"])
    assert args.cf == "x.yaml"
    assert args.set == ["a.b=1", "c.d=2"]
    assert (args.rank, args.role, args.run_id) == (1, "client", "r")
    args = cli.build_parser().parse_args(["--cf", "x.yaml"])
    assert (args.set, args.rank, args.role, args.run_id) == ([], None, None, None)


@pytest.mark.parametrize("argv", [[], ["--cf", "x.yaml", "--role", "boss"],
                                  ["--cf", "x.yaml", "--rank", "-1"]])
def test_cli_usage_errors_exit_2(argv, capsys, no_rank_env):
    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    assert info.value.code == 2
    assert "usage:" in capsys.readouterr().err


@pytest.mark.parametrize("argv, fragment", [
    (["--role", "client", "--run_id", "r"], "--rank and --role go together"),
    (["--role", "server"], "--rank and --role go together"),
    (["--rank", "1", "--run_id", "r"], "--rank and --role go together"),
    (["--rank", "0", "--role", "client", "--run_id", "r"], "use --rank 0 --role server"),
])
def test_cli_rank_and_role_are_checked_before_mpi_and_the_config(argv, fragment, tmp_path, capsys,
                                                                  monkeypatch, no_rank_env):
    # --role without --rank went on to initialise MPI, and only then was refused.
    def no_mpi():
        raise AssertionError("MPI was started")

    monkeypatch.setattr(cli, "mpi_world", no_mpi)
    assert cli.main(["--cf", str(tmp_path / "not-read.yaml")] + argv) == 2
    err = capsys.readouterr().err
    assert len(_error_lines(err)) == 1 and fragment in err and "config file" not in err


def test_pooled_test_off_unquoted_in_a_file(tmp_path):
    # YAML 1.1 reads an unquoted off as false; it must still mean "off".
    c = load_config(_write(tmp_path, "validation_args:\n  pooled_test: off\n"))
    assert c.validation_args.pooled_test == "off"


# --- docs in step with the code -------------------------------------------------------------

def test_every_config_key_has_a_row_on_the_configuration_page_and_a_line_in_help():
    # The page is generated (scripts/config_docs.py); tests/test_unit_docs.py checks it is current.
    import dataclasses
    from pathlib import Path

    from flamby_mpi.cli import build_parser
    from flamby_mpi.config import RunConfig, range_text

    page = (Path(__file__).resolve().parents[1] / "docs" / "configuration.md").read_text().splitlines()
    help_text = build_parser().format_help()
    import typing

    for section_name, section_type in typing.get_type_hints(RunConfig).items():
        for f in dataclasses.fields(section_type):
            key = f"{section_name}.{f.name}"
            assert sum(line.startswith(f"| `{key}` |") for line in page) == 1, \
                f"{key} has no row (or several) in docs/configuration.md"
            assert key in help_text, f"{key} is missing from --help"
            if f.metadata.get("minimum") is not None or f.metadata.get("maximum") is not None:
                row = next(line for line in page if line.startswith(f"| `{key}` |"))
                assert f"| `{range_text(f.metadata)}`" in row, f"docs/configuration.md's row of {key}: {row}"
