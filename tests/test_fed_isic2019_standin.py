"""Fed-ISIC2019 on stand-in data: FLamby's own class reads it, 7 real MPI ranks train on it with
FLamby's EfficientNet (stand-in weights), the in-process twin gives the same model bitwise, and a
rank without the weights exits 2 before anything is downloaded.

FLamby reads the split from its own package; the installed wheel lacks it, so these tests run
FLamby's unchanged code from a private copy with a small split (tests/support/isic_flamby.py).
"""
from __future__ import annotations

import json
import os
import shlex
import sys
import textwrap
from pathlib import Path

import pytest

from support.isic_flamby import (
    CENTERS,
    TEST_PER_CENTER,
    TRAIN_PER_CENTER,
    flamby_with_small_split,
    split_rows,
)
from support.mpi import LAUNCHER, REPO, run_job, run_mpi
from support.mpi import test_env as job_env  # aliased: pytest would collect test_env

pytest.importorskip("flamby", reason="FLamby is not installed")
pytest.importorskip("efficientnet_pytorch", reason="FLamby's isic2019 extra (efficientnet-pytorch) is not installed")
albumentations = pytest.importorskip("albumentations",
                                     reason="FLamby's isic2019 extra (albumentations) is not installed")

CONFIG = REPO / "config" / "fed_isic2019.yaml"
SHORT_RUN = ["--set", "train_args.comm_round=1", "--set", "train_args.num_updates=1"]
# FLamby's training transforms use albumentations.Flip (gone after 1.4.21) and draw from Python's
# and numpy's global generators (albumentations 1.4.0 does; later 1.4.x seed their own from the OS).
needs_flambys_albumentations = pytest.mark.skipif(
    not hasattr(albumentations, "Flip"),
    reason=f"FLamby's Fed-ISIC2019 training transforms need albumentations.Flip (albumentations "
           f"{albumentations.__version__} has none): install albumentations==1.4.0")


@pytest.fixture(scope="module")
def standin(tmp_path_factory):
    """(env extras, data directory, printed launcher args) of one stand-in written by the script."""
    root = tmp_path_factory.mktemp("isic")
    site = flamby_with_small_split(root / "site")
    extra = {"PYTHONPATH": os.pathsep.join([str(site), str(REPO), os.environ.get("PYTHONPATH", "")]),
             "NO_ALBUMENTATIONS_UPDATE": "1"}
    data = root / "data"
    done = run_job([sys.executable, str(REPO / "scripts" / "standin_data.py"), "fed_isic2019", str(data)],
                   cwd=root, env=job_env(root, extra), deadline_s=120)
    assert done.returncode == 0, done.output
    args = shlex.split(done.stdout.strip().splitlines()[-1])
    return extra, data, args


def _standin_batch(args) -> list:
    """The stand-in's batch size as printed: at FLamby's 64, six EfficientNet ranks do not fit this
    machine, and the start-up memory check would refuse the job before the weights are looked for."""
    sets = dict(a.split("=", 1) for a in args[1::2])
    return ["--set", f"train_args.batch_size={sets['train_args.batch_size']}"]


def _python(code: str, extra, cwd: Path, deadline_s: float = 120):
    return run_job([sys.executable, "-c", textwrap.dedent(code)], cwd=cwd, env=job_env(cwd, extra),
                   deadline_s=deadline_s)


def test_printed_args_point_at_the_data_and_the_standin_weights(standin):
    _, data, args = standin
    assert args[0::2] == ["--set"] * (len(args) // 2)
    sets = dict(a.split("=", 1) for a in args[1::2])
    assert sets["data_args.data_path"] == str(data)
    home = Path(sets["data_args.pretrained_weights_dir"])
    assert home.parent == data and "standin" in home.name
    assert "STAND-IN WEIGHTS, NOT PRETRAINED" in (home / "README.txt").read_text()
    assert (home / "hub" / "checkpoints" / "efficientnet-b0-355c32eb.pth").is_file()
    assert int(sets["train_args.batch_size"]) < 64  # FLamby's BATCH_SIZE, too much for 6 ranks here


def test_flambys_classes_read_every_centre_of_the_standin(standin, tmp_path):
    """FLamby's FedIsic2019 (test fold, every centre; pooled) and Isic2019Raw (every row, both
    folds, as written) read the files; the stand-in weights load into FLamby's Baseline."""
    extra, data, args = standin
    home = dict(a.split("=", 1) for a in args[1::2])["data_args.pretrained_weights_dir"]
    done = _python(f"""
        import json, torch, torch.hub
        from flamby.datasets.fed_isic2019 import Baseline, FedIsic2019, Isic2019Raw
        data = {str(data)!r}
        out = {{"centres": [], "raw": None}}
        for center in range({CENTERS}):
            d = FedIsic2019(center=center, train=False, data_path=data)
            x, y = d[0]
            out["centres"].append([len(d), list(x.shape), str(x.dtype), int(y)])
        raw = Isic2019Raw(data_path=data)
        shapes = sorted({{tuple(raw[i][0].shape) for i in range(len(raw))}})
        out["raw"] = [len(raw), shapes, sorted(set(int(c) for c in raw.centers))]
        out["pooled_test"] = len(FedIsic2019(train=False, pooled=True, data_path=data))
        torch.hub.set_dir({home!r} + "/hub")
        model = Baseline()
        out["logits"] = list(model.eval()(FedIsic2019(center=0, train=False, data_path=data)[0][0][None]).shape)
        print("RESULT", json.dumps(out))
        """, extra, tmp_path)
    assert done.returncode == 0, done.output
    out = json.loads(done.stdout.split("RESULT", 1)[1])
    rows = split_rows()
    for center, (n, shape, dtype, target) in enumerate(out["centres"]):
        assert n == TEST_PER_CENTER
        assert shape == [3, 200, 200] and dtype == "torch.float32"  # FLamby's 200 x 200 crop
        assert target == next(int(r["target"]) for r in rows if r["fold2"] == f"test_{center}")
    n_raw, shapes, centres = out["raw"]
    assert n_raw == CENTERS * (TRAIN_PER_CENTER + TEST_PER_CENTER)
    assert shapes == [[3, 224, 298]]  # shorter side 224, as FLamby's resize_images.py leaves it
    assert centres == list(range(CENTERS))
    assert out["pooled_test"] == CENTERS * TEST_PER_CENTER
    assert out["logits"] == [1, 8]


@needs_flambys_albumentations
def test_seven_mpi_ranks_train_on_the_standin_and_match_the_inprocess_twin(standin, workdir):
    """1 server + 6 EfficientNet-b0 clients: ~20 s and ~1.2 GB per rank on 2 cores (measured)."""
    extra, _, args = standin
    cwd, home, marker = workdir
    common = ["--cf", str(CONFIG)] + args + SHORT_RUN
    done = run_mpi(7, common + ["--set", f"common_args.output_dir={cwd / 'mpi'}", "--run_id", marker], cwd, home,
                   deadline_s=300, env_extra=extra, marker=marker)
    assert done.returncode == 0, done.output
    results = json.loads((cwd / "mpi" / "results.json").read_text())
    metrics = results["metrics"]
    for center in range(CENTERS):
        assert f"client_test_{center}" in metrics, metrics
    assert results["num_clients"] == CENTERS and results["rounds_completed"] == 1
    twin = run_job([sys.executable, str(LAUNCHER)] + common
                   + ["--set", "comm_args.backend=inprocess", "--set", f"common_args.output_dir={cwd / 'twin'}"],
                   cwd=cwd, env=job_env(home, extra), deadline_s=300)
    assert twin.returncode == 0, twin.output
    assert (cwd / "mpi" / "global_model.pt").read_bytes() == (cwd / "twin" / "global_model.pt").read_bytes()


@needs_flambys_albumentations
def test_without_the_weights_every_rank_exits_2_naming_file_directory_and_fetch_command(standin, workdir):
    """An empty TORCH_HOME, no weights key: refused before the model is built, so no download is
    tried (also on a machine with internet) and nothing hangs on DNS."""
    extra, data, args = standin
    cwd, home, marker = workdir
    torch_home = cwd / "empty_torch_home"
    torch_home.mkdir()
    done = run_mpi(7, ["--cf", str(CONFIG), "--set", f"data_args.data_path={data}",
                       "--set", f"common_args.output_dir={cwd / 'run'}"] + _standin_batch(args) + SHORT_RUN, cwd, home,
                   deadline_s=60, env_extra=dict(extra, TORCH_HOME=str(torch_home)), marker=marker)
    assert done.returncode == 2, done.output
    assert "Traceback" not in done.output
    looked_in = torch_home / "hub" / "checkpoints"
    assert "efficientnet-b0-355c32eb.pth" in done.stderr
    assert str(looked_in) in done.stderr
    assert f"TORCH_HOME={torch_home} python -c" in done.stderr
    assert "EfficientNet.from_pretrained(\"efficientnet-b0\")" in done.stderr
    assert not looked_in.exists() or not any(looked_in.iterdir())  # nothing was downloaded


@needs_flambys_albumentations
def test_a_weights_dir_without_the_file_names_the_config_key(standin, workdir):
    extra, data, args = standin
    cwd, home, marker = workdir
    empty = cwd / "weights"
    empty.mkdir()
    done = run_job([sys.executable, str(LAUNCHER), "--cf", str(CONFIG), "--set", f"data_args.data_path={data}",
                    "--set", f"data_args.pretrained_weights_dir={empty}", "--set", "comm_args.backend=inprocess",
                    "--set", f"common_args.output_dir={cwd / 'run'}"] + _standin_batch(args) + SHORT_RUN,
                   cwd=cwd, env=job_env(home, extra), deadline_s=60)
    assert done.returncode == 2, done.output
    assert "Traceback" not in done.output
    assert f"{empty}/hub/checkpoints" in done.stderr and "data_args.pretrained_weights_dir" in done.stderr


def test_the_writer_refuses_a_flamby_without_its_split(tmp_path):
    """A FLamby whose package lacks train_test_split (as the wheel): exit 2 naming the file."""
    site = flamby_with_small_split(tmp_path / "site")
    split = site / "flamby" / "datasets" / "fed_isic2019" / "dataset_creation_scripts" / "train_test_split"
    split.unlink()
    extra = {"PYTHONPATH": os.pathsep.join([str(site), str(REPO)])}
    done = run_job([sys.executable, str(REPO / "scripts" / "standin_data.py"), "fed_isic2019", str(tmp_path / "d")],
                   cwd=tmp_path, env=job_env(tmp_path, extra), deadline_s=60)
    assert done.returncode == 2, done.output
    assert str(split) in done.stderr and "Traceback" not in done.output
    assert "git" in done.stderr
    assert not (tmp_path / "d" / "ISIC_2019_Training_Input_preprocessed").exists()
