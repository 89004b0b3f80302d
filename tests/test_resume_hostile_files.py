"""--resume with hostile files in the newest checkpoint: it names the file, falls back to the cut
before, and ends with the uninterrupted run's model bit for bit; with no usable cut, exit 2. Never a
hang (every run has a deadline), never a read without bound.

- In process (the whole resume protocol: rank 0 reads the manifests, each rank checks its own
  files, the ranks agree), for a manifest, a rank's .pt and a rank's .json replaced by a FIFO, a
  link to /dev/zero or a huge file.
- With real processes: `mpiexec -n 3`, the newest manifest a FIFO, a /dev/zero link, a 30 MB file:
  the resume ends within 20 s of its start with the uninterrupted run's global_model.pt.
The reference is an uninterrupted run of the same config: training is deterministic, so resuming
from any cut gives the same model (and the in-process twin is bitwise equal to MPI).
"""
import hashlib
import shutil
import time
from pathlib import Path

import pytest

from flamby_mpi import cli
from support.files import plant_hostile
from support.mpi import DEFAULT_CONFIG, run_mpi

pytestmark = pytest.mark.timeout(900)

RUN = ["--set", "train_args.num_updates=5", "--set", "validation_args.frequency_of_the_test=2",
       "--set", "tracking_args.tensorboard=false", "--set", "common_args.random_seed=7", "--quiet"]
RESUME_WITHIN_S = 20


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---- in process: the resume protocol of 5 ranks ---------------------------------------------------

def _argv(out: Path, rounds: int, extra=()):
    return ["--cf", str(DEFAULT_CONFIG), "--set", "comm_args.backend=inprocess", *RUN,
            "--set", f"train_args.comm_round={rounds}", "--set", f"common_args.output_dir={out}", *extra]


@pytest.fixture
def finished(tmp_path, monkeypatch):
    """A finished 3-round run (checkpoints round_2 and round_3) and its model's sha256."""
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "run"
    assert cli.main(_argv(out, 3)) == 0
    return out, _sha(out / "global_model.pt")


@pytest.mark.parametrize("name", ["manifest.json", "rank_2.pt", "rank_2.json", "rank_0.pt"])
@pytest.mark.parametrize("kind", ["fifo", "dev-zero-link", "huge"])
def test_a_hostile_file_in_the_newest_cut_is_named_and_the_cut_before_used(kind, name, finished, capsys):
    """A bad manifest is skipped by rank 0; a bad rank file fails that rank's check, and every rank
    falls back to round 2, the newest cut intact everywhere; round 3 is redone to the same model."""
    out, model = finished
    victim = out / "checkpoints" / "round_3" / name
    plant_hostile(victim, kind)
    (out / "global_model.pt").unlink()
    capsys.readouterr()
    tick = time.monotonic()
    assert cli.main(_argv(out, 3, ["--resume"])) == 0
    assert time.monotonic() - tick < RESUME_WITHIN_S
    shown = "".join(capsys.readouterr())
    assert f"checkpoint of round 3 skipped: {victim}" in shown, shown
    assert "resumed from round 2" in shown and "Traceback" not in shown
    assert _sha(out / "global_model.pt") == model
    assert victim.is_file() and not victim.is_symlink()  # round 3 was written again, by the run


@pytest.mark.parametrize("name,says", [("manifest.json", "no complete checkpoint in"),
                                       ("rank_1.json", "no checkpoint is intact on every rank")])
def test_hostile_files_in_every_cut_end_the_resume_with_exit_2_naming_them(name, says, finished, capsys):
    out, _ = finished
    victims = [out / "checkpoints" / f"round_{r}" / name for r in (2, 3)]
    plant_hostile(victims[0], "fifo")
    plant_hostile(victims[1], "dev-zero-link")
    capsys.readouterr()
    assert cli.main(_argv(out, 3, ["--resume"])) == 2
    err = capsys.readouterr().err
    assert says in err and all(str(v) in err for v in victims), err
    assert "Traceback" not in err and err.count("flamby-mpi: error") == 1


# ---- real processes: mpiexec -n 3 -----------------------------------------------------------------

MPI_RUN = [*RUN, "--set", "data_args.synthetic_num_centers=2"]


@pytest.mark.mpi
def test_mpirun_resume_with_a_hostile_newest_manifest_falls_back_within_20_s(workdir):
    """One finished 3-round MPI run, copied three times; in each copy the newest manifest becomes a
    FIFO, a link to /dev/zero, a 30 MB file. `mpiexec -n 3 ... --resume` with comm_round 4 ends
    within 20 s, naming the file, from round 2, with the model of an uninterrupted 4-round run."""
    cwd, home, marker = workdir
    first = cwd / "first"

    def args(out: Path, rounds: int, extra=()):
        return ["--cf", str(DEFAULT_CONFIG), *MPI_RUN, "--run_id", marker, "--set", f"train_args.comm_round={rounds}",
                "--set", f"common_args.output_dir={out}", *extra]

    job = run_mpi(3, args(first, 3), cwd, home, deadline_s=300, marker=marker)
    assert job.returncode == 0, job.output
    reference = cwd / "reference"
    uninterrupted = run_mpi(3, args(reference, 4), cwd, home, deadline_s=300, marker=marker)
    assert uninterrupted.returncode == 0, uninterrupted.output
    for kind in ("fifo", "dev-zero-link", "huge"):
        out = cwd / kind
        shutil.copytree(first, out, symlinks=True)
        victim = out / "checkpoints" / "round_3" / "manifest.json"
        plant_hostile(victim, kind)
        resumed = run_mpi(3, args(out, 4, ["--resume"]), cwd, home, deadline_s=RESUME_WITHIN_S, marker=marker)
        assert resumed.returncode == 0, (kind, resumed.output)
        assert resumed.seconds < RESUME_WITHIN_S and resumed.leftovers == []
        assert f"checkpoint of round 3 skipped: {victim}" in resumed.output, resumed.output
        assert "resumed from round 2" in resumed.output and "Traceback" not in resumed.output
        assert _sha(out / "global_model.pt") == _sha(reference / "global_model.pt"), kind
