"""Unit tests of flamby_mpi.datasets: synthetic, name resolution, user modules, FLamby errors."""
import builtins
import functools
import itertools
import json
import subprocess
import sys
import textwrap
import uuid

import numpy as np
import pytest
import torch

from flamby_mpi.config import DataArgs
from flamby_mpi.datasets import FLAMBY_DATASETS, DatasetSpec, resolve_dataset
from flamby_mpi.datasets.flamby_datasets import (
    FLAMBY_EXTRAS,
    canonical_flamby_name,
    flamby_construction_guard,
    import_flamby_dataset,
)
from flamby_mpi.datasets.spec import REQUIRED_ATTRIBUTES
from flamby_mpi.datasets.synthetic import center_sizes, metric
from flamby_mpi.exit.errors import UserError
from support.mpi import REPO
from support.optional import import_or_skip, shared_or_skip
from support.paths import SHARED_DATA
from support.side_by_side import run_side_by_side

HEART_DATA = SHARED_DATA / "fed_heart_disease"


def _synthetic(seed=0, **kw):
    return resolve_dataset(DataArgs(dataset="synthetic", **kw), seed)


def _all_samples(spec, center):
    tr, te = spec.center_dataset(center, True), spec.center_dataset(center, False)
    return (torch.cat([tr.tensors[0], te.tensors[0]]), torch.cat([tr.tensors[1], te.tensors[1]]))


# --- synthetic ------------------------------------------------------------------------------

def test_synthetic_spec_values():
    spec = _synthetic()
    assert spec.name == "synthetic"
    assert spec.num_clients == 4
    assert spec.batch_size == 16
    assert spec.learning_rate == 0.05
    assert spec.optimizer_class is torch.optim.SGD
    assert isinstance(spec.baseline(), torch.nn.Module)


def test_synthetic_is_deterministic_for_a_seed():
    a, b = _synthetic(seed=5), _synthetic(seed=5)
    for center, train in itertools.product(range(4), (True, False)):
        da, db = a.center_dataset(center, train), b.center_dataset(center, train)
        assert torch.equal(da.tensors[0], db.tensors[0])
        assert torch.equal(da.tensors[1], db.tensors[1])


def test_synthetic_differs_across_seeds():
    a, b = _synthetic(seed=0), _synthetic(seed=1)
    for center in range(4):
        xa, xb = a.center_dataset(center, True).tensors[0], b.center_dataset(center, True).tensors[0]
        assert xa.shape == xb.shape
        assert not torch.allclose(xa, xb)


def test_synthetic_centres_are_non_iid():
    spec = _synthetic()
    label_means, feature_means, sizes = [], [], []
    for center in range(spec.num_clients):
        x, y = _all_samples(spec, center)
        assert x.dtype == torch.float32 and y.shape == (len(x), 1)
        assert set(torch.unique(y).tolist()) == {0.0, 1.0}
        label_means.append(y.mean().item())
        feature_means.append(x.mean(0))
        sizes.append(len(x))
    assert len(set(sizes)) == len(sizes)  # all sizes differ
    assert sizes == center_sizes(4, 200) == [200, 300, 100, 250]
    assert len({round(m, 4) for m in label_means}) == len(label_means)
    assert max(label_means) - min(label_means) > 0.3
    for i, j in itertools.combinations(range(len(feature_means)), 2):
        assert torch.dist(feature_means[i], feature_means[j]).item() > 0.3, (i, j)


def test_synthetic_train_and_test_are_disjoint_and_add_up():
    spec = _synthetic()
    for center in range(spec.num_clients):
        tr, te = spec.center_dataset(center, True), spec.center_dataset(center, False)
        n = center_sizes(4, 200)[center]
        assert len(tr) == int(n * 2 / 3)
        assert len(tr) + len(te) == n
        train_rows = {tuple(r.tolist()) for r in tr.tensors[0]}
        test_rows = {tuple(r.tolist()) for r in te.tensors[0]}
        assert not train_rows & test_rows
    pooled = spec.pooled_dataset(train=False)
    assert len(pooled) == sum(len(spec.center_dataset(c, False)) for c in range(4))
    assert torch.equal(pooled.tensors[0][: len(spec.center_dataset(0, False))],
                       spec.center_dataset(0, False).tensors[0])


def test_synthetic_number_of_centres_is_configurable():
    spec = _synthetic(synthetic_num_centers=6, synthetic_samples_per_center=40)
    assert spec.num_clients == 6
    assert [len(_all_samples(spec, c)[0]) for c in range(6)] == [40, 60, 20, 50, 30, 40]
    with pytest.raises(ValueError, match="0..5"):
        spec.center_dataset(6, True)


def test_synthetic_get_nb_max_rounds():
    spec = _synthetic()
    # 565 training samples / 4 centres // 16 per batch = 8 batches per epoch, 50 epochs, 100 updates.
    assert spec.get_nb_max_rounds(100) == 4
    assert spec.get_nb_max_rounds(1) == 400
    assert spec.get_nb_max_rounds(10 ** 6) == 1
    for n in (1, 7, 100, 1000, 10 ** 9):
        assert spec.get_nb_max_rounds(n) >= 1


def test_synthetic_metric_is_accuracy():
    assert metric(np.array([1, 0, 1, 0]), np.array([0.9, 0.2, 0.4, 0.6])) == 0.5
    assert metric(np.array([[1.0], [0.0]]), np.array([[0.7], [0.1]])) == 1.0
    assert metric([1, 1, 1, 1], [0.1, 0.2, 0.3, 0.51]) == 0.25
    assert _synthetic().metric([0, 1], [0.2, 0.8]) == 1.0


def test_synthetic_with_data_path_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="takes no data_path"):
        _synthetic(data_path=str(tmp_path))


# --- names ----------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["fed_heart_disease", "Fed-Heart-Disease", "heart_disease",
                                  " FED_HEART_DISEASE "])
def test_canonical_flamby_name(name):
    assert canonical_flamby_name(name) == "fed_heart_disease"


@pytest.mark.parametrize("name", ["synthetic", "heart", "fed_mnist", "my.module"])
def test_canonical_flamby_name_unknown(name):
    assert canonical_flamby_name(name) is None


def test_every_flamby_dataset_has_an_extra():
    assert set(FLAMBY_EXTRAS) == set(FLAMBY_DATASETS)
    for name in FLAMBY_DATASETS:
        assert canonical_flamby_name(name.replace("_", "-").title()) == name


def test_unknown_dataset_lists_flamby_names():
    with pytest.raises(UserError) as info:
        resolve_dataset(DataArgs(dataset="mnist"), 0)
    text = str(info.value)
    assert "unknown dataset 'mnist'" in text
    for name in FLAMBY_DATASETS:
        assert name in text
    assert "synthetic" in text


# --- user modules (dotted path) ------------------------------------------------------------

@pytest.fixture
def user_module(tmp_path, monkeypatch):
    """Writes a module under a unique name into tmp_path (on sys.path); returns its name."""
    monkeypatch.syspath_prepend(str(tmp_path))
    made = []

    def make(source, package=None):
        name = f"user_silos_{uuid.uuid4().hex[:10]}"
        folder = tmp_path
        if package:
            folder = tmp_path / package
            folder.mkdir(exist_ok=True)
            (folder / "__init__.py").write_text("")
        (folder / f"{name}.py").write_text(textwrap.dedent(source))
        full = f"{package}.{name}" if package else name
        made.append(full)
        return full

    yield make
    for name in made:
        sys.modules.pop(name, None)


GOOD_MODULE = """
    from flamby_mpi.datasets.synthetic import (BATCH_SIZE, LR, Baseline, BaselineLoss, Optimizer,
                                               SyntheticModule, metric)
    NUM_CLIENTS = 3
    _m = SyntheticModule(seed=1, num_centers=NUM_CLIENTS)

    def get_nb_max_rounds(num_updates, batch_size=BATCH_SIZE):
        return 7

    def FedClass(center=0, train=True, pooled=False):
        return _m.FedClass(center=center, train=train, pooled=pooled)
"""


def test_a_module_in_the_directory_the_command_runs_in_is_found_by_launch_client_as_by_check(tmp_path):
    """`python -m flamby_mpi check` found my_silos.py in the current directory (python -m puts it on
    sys.path) and said ready; `python launch_client.py` then said "unknown dataset"."""
    from support.mpi import LAUNCHER, test_env

    (tmp_path / "home").mkdir()
    (tmp_path / "my_silos_here.py").write_text(textwrap.dedent(GOOD_MODULE))
    done = subprocess.run([sys.executable, str(LAUNCHER), "--cf", str(REPO / "config" / "fedml_config.yaml"),
                           "--run_id", "here", "--set", "data_args.dataset=my_silos_here",
                           "--set", "comm_args.backend=inprocess", "--set", "train_args.comm_round=1",
                           "--set", "train_args.num_updates=2", "--quiet"],
                          cwd=tmp_path, env=test_env(tmp_path / "home"), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert (tmp_path / "runs" / "here" / "results.json").exists()


def test_dotted_user_module(user_module):
    pkg = f"pkg_{uuid.uuid4().hex[:8]}"
    name = user_module(GOOD_MODULE, package=pkg)
    assert "." in name
    spec = resolve_dataset(DataArgs(dataset=name), 0)
    assert spec.name == name
    assert spec.num_clients == 3
    assert spec.batch_size == 16 and spec.learning_rate == 0.05
    assert spec.optimizer_class is torch.optim.SGD
    assert spec.get_nb_max_rounds(5) == 7
    assert len(spec.center_dataset(2, True)) == 66  # centre 2: 100 samples, 2/3 for training
    assert spec.make_guard is None
    sys.modules.pop(pkg, None)


def test_dotted_user_module_rejects_data_path_it_cannot_take(user_module, tmp_path):
    pkg = f"pkg_{uuid.uuid4().hex[:8]}"
    name = user_module(GOOD_MODULE, package=pkg)
    spec = resolve_dataset(DataArgs(dataset=name, data_path=str(tmp_path)), 0)
    assert spec.data_path == str(tmp_path)
    with pytest.raises(UserError, match=f"data_args.data_path: dataset {name} does not accept it"):
        spec.center_dataset(0, True)
    # The plan refuses it first, with the config's other problems, before any output directory is made
    # (it used to be refused on every rank once the run's directory existed, which then refused the
    # corrected command as an interrupted run).
    from flamby_mpi.config import load_config
    from flamby_mpi.plan import make_plan

    config = load_config(str(REPO / "config" / "fedml_config.yaml"),
                         [f"data_args.dataset={name}", f"data_args.data_path={tmp_path}",
                          f"common_args.output_dir={tmp_path / 'run'}"])
    with pytest.raises(UserError, match=f"data_args.data_path: dataset {name} does not accept it") as refused:
        make_plan(config)
    assert refused.value.exit_code == 2 and not (tmp_path / "run").exists()
    sys.modules.pop(pkg, None)


def test_dotted_user_module_missing_attributes(user_module):
    pkg = f"pkg_{uuid.uuid4().hex[:8]}"
    name = user_module("NUM_CLIENTS = 2\nBATCH_SIZE = 4\nLR = 0.1\n", package=pkg)
    with pytest.raises(UserError) as info:
        resolve_dataset(DataArgs(dataset=name), 0)
    message = str(info.value).splitlines()[0]
    missing = ["Optimizer", "get_nb_max_rounds", "FedClass", "Baseline", "BaselineLoss", "metric"]
    assert message == f"dataset module {name!r} lacks {', '.join(missing)}"
    for present in ("NUM_CLIENTS", "BATCH_SIZE", "LR"):
        assert present not in message
    assert "fed_heart_disease" in str(info.value)  # the hint points to the reference interface
    sys.modules.pop(pkg, None)


def test_dotted_module_that_does_not_import():
    with pytest.raises(UserError, match="cannot import dataset module 'no_such_pkg_xyz.data'"):
        resolve_dataset(DataArgs(dataset="no_such_pkg_xyz.data"), 0)


def test_required_attributes_match_flamby_interface():
    assert set(REQUIRED_ATTRIBUTES) == {"NUM_CLIENTS", "BATCH_SIZE", "LR", "Optimizer",
                                        "get_nb_max_rounds", "FedClass", "Baseline",
                                        "BaselineLoss", "metric"}


# --- DatasetSpec construction ----------------------------------------------------------------

def _spec(fed_class, **kw):
    return DatasetSpec(name="x", num_clients=1, batch_size=1, learning_rate=0.1,
                       optimizer_class=torch.optim.SGD, get_nb_max_rounds=lambda n: 1,
                       fed_class=fed_class, baseline=torch.nn.Identity, baseline_loss=torch.nn.MSELoss,
                       metric=metric, **kw)


def test_spec_passes_data_path_and_debug():
    calls = []

    def fed_class(**kwargs):
        calls.append(kwargs)
        return torch.utils.data.TensorDataset(torch.zeros(1))

    _spec(fed_class, data_path="/d", debug=True).center_dataset(1, False)
    _spec(fed_class).pooled_dataset(True)
    assert calls == [{"center": 1, "train": False, "pooled": False, "data_path": "/d", "debug": True},
                     {"train": True, "pooled": True}]


def test_spec_drops_debug_when_not_accepted():
    def fed_class(center=0, train=True, pooled=False):
        return (center, train, pooled)

    assert _spec(fed_class, debug=True).center_dataset(2, True) == (2, True, False)


def test_spec_uses_the_guard():
    def fed_class(center=0, train=True, pooled=False):
        raise ValueError("The dataset was not downloaded, run the download script")

    spec = _spec(fed_class, make_guard=functools.partial(flamby_construction_guard, "fed_ixi"))
    with pytest.raises(UserError) as info:
        spec.center_dataset(0, True)
    assert "fed_ixi" in str(info.value)
    assert "fed_ixi/dataset_creation_scripts" in str(info.value)
    assert "python download.py --output-folder DIR" in str(info.value)


# --- FLamby missing, FLamby errors -----------------------------------------------------------

@pytest.fixture
def without_flamby(monkeypatch):
    """Makes `import flamby` fail, whether or not FLamby is installed."""
    for name in [m for m in sys.modules if m == "flamby" or m.startswith("flamby.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "flamby", None)


@pytest.mark.parametrize("name", ["fed_heart_disease", "Fed-Heart-Disease"])
def test_flamby_not_installed(without_flamby, name):
    with pytest.raises(UserError) as info:
        resolve_dataset(DataArgs(dataset=name), 0)
    text = str(info.value)
    assert "dataset fed_heart_disease needs FLamby, which is not installed" in text
    assert "git clone" in text
    assert "https://github.com/owkin/FLamby.git" in text
    assert "[heart]" in text


def test_flamby_not_installed_names_the_right_extra(without_flamby):
    with pytest.raises(UserError) as info:
        import_flamby_dataset("fed_camelyon16")
    assert "[cam16]" in str(info.value)


def test_flamby_dataset_missing_dependency(tmp_path, monkeypatch):
    """A FLamby dataset whose own dependency is missing names that package and the extra."""
    for name in [m for m in sys.modules if m == "flamby" or m.startswith("flamby.")]:
        monkeypatch.delitem(sys.modules, name)
    fake = tmp_path / "flamby" / "datasets" / "fed_ixi"
    fake.mkdir(parents=True)
    (tmp_path / "flamby" / "__init__.py").write_text("")
    (tmp_path / "flamby" / "datasets" / "__init__.py").write_text("")
    (fake / "__init__.py").write_text("import no_such_dependency_xyz\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        with pytest.raises(UserError) as info:
            import_flamby_dataset("fed_ixi")
    finally:
        for name in [m for m in sys.modules if m == "flamby" or m.startswith("flamby.")]:
            sys.modules.pop(name)
    text = str(info.value)
    assert "'no_such_dependency_xyz'" in text
    assert "FLamby's fed_ixi needs" in text
    assert "pip install -e '.[ixi]'" in text


def test_guard_turns_input_into_user_error():
    original = builtins.input
    with pytest.raises(UserError) as info:
        with flamby_construction_guard("fed_tcga_brca"):
            assert builtins.input is not original
            builtins.input("Do you accept the licence? [y/N] ")
    assert builtins.input is original
    text = str(info.value)
    assert "FLamby asked a question while loading fed_tcga_brca" in text
    assert "Do you accept the licence?" in text
    assert "accept_license" in text


def test_guard_turns_not_downloaded_into_user_error():
    original = builtins.input
    cause = ValueError("The dataset was not downloaded, config file not found")
    with pytest.raises(UserError) as info:
        with flamby_construction_guard("fed_heart_disease"):
            raise cause
    assert builtins.input is original
    text = str(info.value)
    assert "the data of fed_heart_disease was not found" in text
    assert "was not downloaded" in text
    assert "fed_heart_disease/dataset_creation_scripts" in text
    assert "python download.py --output-folder DIR" in text
    assert "data_args.data_path" in text
    assert info.value.__cause__ is cause


def test_guard_turns_missing_file_into_user_error():
    with pytest.raises(UserError, match="was not found"):
        with flamby_construction_guard("fed_ixi"):
            raise FileNotFoundError("[Errno 2] No such file or directory: '/x'")


def test_guard_lets_other_errors_through():
    original = builtins.input
    with pytest.raises(ValueError, match="shape mismatch"):
        with flamby_construction_guard("fed_ixi"):
            raise ValueError("shape mismatch")
    with pytest.raises(RuntimeError):
        with flamby_construction_guard("fed_ixi"):
            raise RuntimeError("not downloaded")  # only ValueError/FileNotFoundError are translated
    assert builtins.input is original
    with flamby_construction_guard("fed_ixi"):
        pass
    assert builtins.input is original


# --- real FLamby ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def flamby_heart():
    """Skips without FLamby (fails under CI); importing it (pandas, scikit-learn) takes a second or two, once."""
    return import_or_skip("flamby.datasets.fed_heart_disease")


def test_flamby_heart_resolves(tmp_path, flamby_heart):
    spec = resolve_dataset(DataArgs(dataset="Fed-Heart-Disease"), 0)
    assert spec.name == "fed_heart_disease"
    assert spec.num_clients == 4
    assert spec.make_guard is not None
    assert spec.get_nb_max_rounds(100) == 15
    # A data_path that does not exist is a UserError before FLamby's class is built.
    with pytest.raises(UserError, match="was not found"):
        missing = resolve_dataset(DataArgs(dataset="fed_heart_disease", data_path=str(tmp_path / "no")), 0)
        missing.center_dataset(0, True)


def test_flamby_heart_centre_sizes(flamby_heart):
    shared_or_skip(HEART_DATA)
    spec = resolve_dataset(DataArgs(dataset="fed_heart_disease", data_path=str(HEART_DATA)), 0)
    assert [len(spec.center_dataset(c, True)) for c in range(4)] == [199, 172, 30, 85]
    assert [len(spec.center_dataset(c, False)) for c in range(4)] == [104, 89, 16, 45]


HEART_DIGEST = textwrap.dedent("""
    import hashlib, json, sys
    import torch
    if sys.argv[2] == "plain":
        import flamby.datasets.fed_heart_disease as heart
    else:
        from flamby_mpi.datasets.flamby_datasets import import_flamby_dataset
        heart = import_flamby_dataset("fed_heart_disease")
    digest = hashlib.sha256()
    sets = [dict(center=c, train=t) for c in range(4) for t in (True, False)] + [dict(train=False, pooled=True)]
    for kwargs in sets:
        data = heart.FedHeartDisease(data_path=sys.argv[1], **kwargs)
        for i in range(len(data)):
            for tensor in data[i]:
                digest.update(tensor.numpy().tobytes())
    digest.update(torch.get_rng_state().numpy().tobytes())  # flamby.utils seeds torch when imported
    from flamby_mpi.runtime.startup import loaded_modules
    print(json.dumps({"digest": digest.hexdigest(), "modules": loaded_modules()}))
""")


def test_flamby_heart_without_its_unused_imports_builds_the_same_data(flamby_heart):
    """What a rank imports for Fed-Heart-Disease (flamby_mpi/datasets/deferred_imports.py) leaves out
    scipy.stats, sklearn.metrics, matplotlib and seaborn, and every centre's sets are the same bits."""
    shared_or_skip(HEART_DATA)

    hows = ("plain", "deferred")
    found = run_side_by_side([[sys.executable, "-c", HEART_DIGEST, str(HEART_DATA), how] for how in hows], 120,
                             cwd=REPO)
    for how, done in zip(hows, found, strict=True):
        assert done.returncode == 0, f"{how}: {done.stderr}"
    plain, ours = (json.loads(done.stdout.strip().splitlines()[-1]) for done in found)
    assert ours["digest"] == plain["digest"]
    for unused in ("scipy.stats", "sklearn.metrics", "matplotlib", "seaborn"):
        assert unused in plain["modules"]  # what FLamby's own import loads, and a run does not
        assert not [m for m in ours["modules"] if m == unused or m.startswith(unused + ".")], unused


# --- user modules by a plain (not dotted) name ------------------------------------------------

def test_plain_module_name(user_module):
    """data_args.dataset: my_silos, for a my_silos.py on the Python path."""
    name = user_module(GOOD_MODULE)
    assert "." not in name
    spec = resolve_dataset(DataArgs(dataset=name), 0)
    assert (spec.name, spec.num_clients) == (name, 3)


def test_plain_module_name_whose_dependency_is_missing(user_module):
    name = user_module("import no_such_dependency_xyz\n")
    with pytest.raises(UserError) as info:
        resolve_dataset(DataArgs(dataset=name), 0)
    assert f"cannot import dataset module {name!r}: No module named 'no_such_dependency_xyz'" in str(info.value)


@pytest.mark.parametrize("name", ["fed_heart_diseas", "Fed-Heart", ".relative", ""])
def test_names_that_are_no_module_list_the_choices(name):
    """A misspelt name is not a module either: the error is today's, with every choice."""
    with pytest.raises(UserError) as info:
        resolve_dataset(DataArgs(dataset=name), 0)
    text = str(info.value)
    assert text.startswith(f"unknown dataset {name!r}")
    for choice in ("synthetic", *FLAMBY_DATASETS):
        assert choice in text
    assert "my_silos" in text  # and how to name a module of one's own


class _RawTakingPath:  # module level, as FLamby's classes are: pickles name them
    def __init__(self, train=True, data_path=None):
        self.train, self.data_path = train, data_path


class _FedWithoutPath(_RawTakingPath):
    def __init__(self, center=0, train=True, pooled=False):
        super().__init__(train=train)
        self.center = center


def test_data_path_reaches_the_base_class_that_takes_it_and_survives_pickling():
    """FLamby's FedKits19 takes no data_path, its base does: the path goes to the base, unchanged."""
    import pickle

    from flamby_mpi.datasets.data_path_to_base import base_taking_data_path, with_data_path

    Fed, Raw = _FedWithoutPath, _RawTakingPath
    assert base_taking_data_path(Fed) is Raw and base_taking_data_path(Raw) is None
    dataset = with_data_path(Fed, "/data/kits")(center=3, train=False)
    assert (dataset.center, dataset.train, dataset.data_path) == (3, False, "/data/kits")
    assert isinstance(dataset, Fed)
    copy = pickle.loads(pickle.dumps(dataset))
    assert (copy.center, copy.train, copy.data_path) == (3, False, "/data/kits")
