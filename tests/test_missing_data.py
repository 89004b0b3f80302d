"""Offline clusters: a FLamby dataset whose data is not where the run looks ends with exit 2, where it
looked and FLamby's own commands for THAT dataset, never a traceback (FLamby installed with its extras)."""
import importlib
import importlib.util
import os
from pathlib import Path

import pytest

from flamby_mpi import cli
from support.mpi import REPO, run_mpi

# Each dataset's own download/preprocessing script (FLamby's README for it), as the advice must name it.
COMMANDS = {
    "fed_heart_disease": ["python download.py --output-folder {path}"],
    "fed_tcga_brca": ["ships inside FLamby", "leave data_args.data_path out"],
    "fed_ixi": ["python download.py --output-folder {path}"],
    "fed_isic2019": ["python download_isic.py --output-folder {path}", "python resize_images.py"],
    "fed_camelyon16": ["python download.py --output-folder {path} --path-to-secret", "python tiling_slides.py"],
    "fed_kits19": ["git clone https://github.com/neheller/kits19 {path}", "python -m starter_code.get_imaging",
                   "python create_config.py --output_folder {path}", "python parsing_and_adding_metadata.py",
                   "python run_nnUnet_plan_and_preprocess.py"],
    "fed_lidc_idri": ["python download_ct_scans.py -o {path}"],
}

# Scripts only one dataset has.
OWN_SCRIPTS = {"download_isic.py": "fed_isic2019", "resize_images.py": "fed_isic2019",
               "tiling_slides.py": "fed_camelyon16", "download_ct_scans.py": "fed_lidc_idri",
               "run_nnUnet_plan_and_preprocess.py": "fed_kits19", "create_config.py": "fed_kits19"}


def _needs(name):
    if importlib.util.find_spec("flamby") is None:
        pytest.skip("FLamby is not installed")
    try:
        importlib.import_module(f"flamby.datasets.{name}")
    except ImportError as exc:  # this dataset's extra is missing
        pytest.skip(f"flamby.datasets.{name}: {exc}")



def _scripts_folder(name):
    import flamby.datasets

    return os.path.join(os.path.dirname(os.path.realpath(flamby.datasets.__file__)), name,
                        "dataset_creation_scripts")


def _config(tmp_path, name, extra=""):
    path = tmp_path / f"{name}.yaml"
    path.write_text(f"data_args:\n  dataset: {name}\n{extra}train_args:\n  comm_round: 1\n  num_updates: 1\n"
                    "comm_args:\n  backend: inprocess\n")
    return path


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_a_nonexistent_data_path_names_the_dataset_s_own_commands(name, tmp_path, capsys, monkeypatch):
    _needs(name)
    monkeypatch.chdir(tmp_path)
    missing = tmp_path / "nowhere" / name
    code = cli.main(["--cf", str(_config(tmp_path, name)), "--set", f"data_args.data_path={missing}",
                     "--run_id", "r"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    assert f"the data of {name} was not found: {missing} (data_args.data_path) does not exist" in err
    for command in COMMANDS[name]:
        assert command.format(path=missing) in err
    if name != "fed_tcga_brca":  # FLamby's scripts run from their own folder, as its README says
        assert _scripts_folder(name) in err
    for script, owner in OWN_SCRIPTS.items():  # no other dataset's steps
        assert (script in err) == (owner == name), script
    assert not (tmp_path / "runs").exists()  # refused before anything is written


def test_a_file_as_data_path_is_refused_as_no_folder(tmp_path, capsys, monkeypatch):
    _needs("fed_ixi")
    monkeypatch.chdir(tmp_path)
    a_file = tmp_path / "ixi.zip"
    a_file.write_bytes(b"PK")
    code = cli.main(["--cf", str(_config(tmp_path, "fed_ixi")), "--set", f"data_args.data_path={a_file}"])
    err = capsys.readouterr().err
    assert code == 2 and "is a file, not a folder" in err and "python download.py" in err
    # The download advice used to name the file as the folder to download into and to set.
    assert "set data_args.data_path to the folder holding fed_ixi's data" in err
    assert f"--output-folder {a_file}" not in err and f"data_path={a_file} (or" not in err


def test_without_data_path_the_advice_names_flamby_s_location_record(tmp_path, capsys, monkeypatch):
    """data_path left out: FLamby reads the record its download script writes in its own folder;
    with none there (as here), the run says which file it looked for."""
    _needs("fed_heart_disease")
    record = Path(_scripts_folder("fed_heart_disease"))
    if any((record / f).exists() for f in ("dataset_location.yaml", "dataset_location_debug.yaml")):
        pytest.skip("this FLamby has a recorded heart download")
    monkeypatch.chdir(tmp_path)
    code = cli.main(["--cf", str(_config(tmp_path, "fed_heart_disease")), "--run_id", "r"])
    captured = capsys.readouterr()
    assert code == 2, captured.err
    assert "Traceback" not in captured.err
    assert f"the location recorded in {record / 'dataset_location.yaml'}" in captured.err
    assert "python download.py --output-folder DIR" in captured.err
    # FLamby's own print before it fails ("USING DEBUG MODE DATASET", once per centre) is left out
    assert "DEBUG MODE" not in captured.out + captured.err, captured.out


@pytest.mark.mpi
def test_missing_data_under_mpiexec_ends_every_rank_with_one_message(workdir):
    _needs("fed_lidc_idri")
    cwd, home, marker = workdir
    missing = cwd / "no_lidc"
    job = run_mpi(5, ["--cf", str(REPO / "config" / "fedml_config.yaml"), "--run_id", marker,
                      "--set", "data_args.dataset=fed_lidc_idri", "--set", f"data_args.data_path={missing}"],
                  cwd, home, deadline_s=180, marker=marker)
    assert job.returncode == 2, job.output
    assert job.stderr.count("flamby-mpi: error") == 1  # said once, by rank 0
    assert f"python download_ct_scans.py -o {missing}" in job.stderr
    assert "Traceback" not in job.output
    assert job.leftovers == []


@pytest.mark.parametrize("present", [(), ("processed.cleveland.data",)])
def test_a_heart_folder_without_its_files_names_them_before_anything_is_written(present, tmp_path, capsys,
                                                                                  monkeypatch):
    """FLamby's Fed-Heart-Disease reads whatever *.data its folder holds: an empty or half-filled
    folder failed on every rank deep in pandas (KeyError) or torch (torch.cat of nothing), exit 1,
    and left a run directory that the corrected command then refused."""
    _needs("fed_heart_disease")
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "heart"
    folder.mkdir()
    for name in present:
        (folder / name).write_text("63.0,1.0,1.0,145.0,233.0,1.0,2.0,150.0,0.0,2.3,3.0,0.0,6.0,0\n")
    code = cli.main(["--cf", str(_config(tmp_path, "fed_heart_disease")), "--set",
                     f"data_args.data_path={folder}", "--run_id", "r"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    lacking = [f"processed.{c}.data" for c in ("cleveland", "hungarian", "switzerland", "va")
               if f"processed.{c}.data" not in present]
    assert f"{folder} (data_args.data_path) lacks {', '.join(lacking)}" in err
    assert f"python download.py --output-folder {folder}" in err
    assert not (tmp_path / "runs").exists()
