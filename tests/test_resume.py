"""Checkpoints and --resume in process (the in-process twin is bitwise equal to MPI, which
test_strategies_mpi.py checks): for every strategy, with client sampling and with differential
privacy, a run stopped by a real SIGTERM at a round boundary and resumed ends with the
uninterrupted run's global_model.pt, metrics and metrics.csv, although half the clients' parts
carry a model of garbage (NaN) and the other half no model at all: a client's model is never read
from its checkpoint before the server's next message overwrites it (every strategy; BatchNorm's
buffers and Adam's moments with a model that has them). Then the checkpoint attacked: corrupt,
truncated, from another config or version, a missing rank, a pickle bomb.

Runs go through flamby_mpi.cli.main(argv), exactly what `python launch_client.py ARGV` runs.
The SIGTERM comes from a thread once the first checkpoint is complete, so the stop lands at
whatever boundary comes next: the result must not depend on which.
"""
import hashlib
import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest
import torch

from flamby_mpi import cli
from support.checkpoint_edit import give_clients_a_poisoned_model, newest_complete_cut
from support.mpi import DEFAULT_CONFIG
from support.optional import import_or_skip
from support.strategy_cases import CASES, HAVE_OPACUS

pytestmark = pytest.mark.timeout(900)

BASE = ["--set", "comm_args.backend=inprocess", "--set", "train_args.num_updates=5",
        "--set", "validation_args.frequency_of_the_test=2", "--set", "tracking_args.tensorboard=false",
        "--set", "common_args.random_seed=5", "--quiet"]
ROUNDS = 8


def _argv(case, output_dir, rounds=ROUNDS, extra=()):
    return ["--cf", str(DEFAULT_CONFIG), "--set", f"train_args.federated_optimizer={case.split('-')[0]}",
            *BASE, *CASES[case], "--set", f"train_args.comm_round={rounds}",
            "--set", f"common_args.output_dir={output_dir}", *extra]


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _sigterm_after_first_checkpoint(output_dir: Path, stop: threading.Event):
    manifest = output_dir / "checkpoints" / "round_1" / "manifest.json"
    while not stop.is_set():
        if manifest.exists():
            os.kill(os.getpid(), signal.SIGTERM)
            return
        time.sleep(0.005)


def _interrupted(argv, output_dir: Path) -> int:
    stop = threading.Event()
    sender = threading.Thread(target=_sigterm_after_first_checkpoint, args=(output_dir, stop), daemon=True)
    sender.start()
    try:
        return cli.main(argv)
    finally:
        stop.set()
        sender.join()


def _same_outcome(a: Path, b: Path):
    assert _sha(a / "global_model.pt") == _sha(b / "global_model.pt")
    assert (a / "metrics.csv").read_text() == (b / "metrics.csv").read_text()
    ra, rb = (json.loads((d / "results.json").read_text()) for d in (a, b))
    assert ra["metrics"] == rb["metrics"] and ra["rounds_completed"] == rb["rounds_completed"] == ROUNDS


@pytest.mark.parametrize("case", list(CASES))
def test_stopped_by_sigterm_then_resumed_equals_the_uninterrupted_run(case, tmp_path, monkeypatch, capsys):
    if case.endswith("-dp") and not HAVE_OPACUS:
        import_or_skip("opacus")  # differential privacy: a skip, or under CI a failure
    monkeypatch.chdir(tmp_path)
    full, stopped = tmp_path / "full", tmp_path / "stopped"
    assert cli.main(_argv(case, full)) == 0
    assert _interrupted(_argv(case, stopped), stopped) == 143  # 128 + SIGTERM
    shown = "".join(capsys.readouterr())
    assert "stopped by SIGTERM after round" in shown and "--resume" in shown
    assert not (stopped / "results.json").exists()
    # Clients 1 and 3 as a checkpoint of before (a model saved), that model garbage; 2 and 4 as now.
    give_clients_a_poisoned_model(newest_complete_cut(stopped), ranks=(1, 3))
    assert cli.main(_argv(case, stopped, extra=["--resume"])) == 0
    out = capsys.readouterr()
    assert "resumed from round" in out.out + out.err
    _same_outcome(full, stopped)
    resumed = json.loads((stopped / "results.json").read_text())["resumed_from"]
    assert 1 <= resumed["round"] < ROUNDS and resumed["path"].endswith(f"round_{resumed['round']}")
    kept = sorted(p.name for p in (stopped / "checkpoints").iterdir())
    assert kept == [f"round_{ROUNDS - 1}", f"round_{ROUNDS}"]  # keep_checkpoints: 2, each dir complete
    for directory in (stopped / "checkpoints").iterdir():
        assert sorted(p.name for p in directory.iterdir()) == sorted(
            ["manifest.json"] + [f"rank_{k}.{e}" for k in range(5) for e in ("pt", "json")])


BATCHNORM = ["--set", "data_args.dataset=support.batchnorm_dataset"]


@pytest.mark.parametrize("case", ["FedAvg-sampled", "Scaffold", "Cyclic-own-models", "FedAvgFineTuning"])
def test_a_model_with_batchnorm_resumes_bitwise_without_the_clients_models(case, tmp_path, monkeypatch):
    """BatchNorm's running statistics and num_batches_tracked are in the model's state, not the
    optimizer's: they too come whole from the server's message. Clients that sat out the round
    before the cut (sampling), Scaffold's and Cyclic's models of their own, the final fine-tuning."""
    monkeypatch.chdir(tmp_path)
    full, stopped = tmp_path / "full", tmp_path / "stopped"
    assert cli.main(_argv(case, full, extra=BATCHNORM)) == 0
    assert _interrupted(_argv(case, stopped, extra=BATCHNORM), stopped) == 143
    cut = newest_complete_cut(stopped)
    give_clients_a_poisoned_model(cut, ranks=(1, 2, 3, 4))
    assert cli.main(_argv(case, stopped, extra=[*BATCHNORM, "--resume"])) == 0
    _same_outcome(full, stopped)
    state = torch.load(full / "global_model.pt", weights_only=True)
    assert any(k.endswith("running_var") for k in state) and int(state["layers.1.num_batches_tracked"]) > 0


# ---- one finished 3-round run, then its checkpoints attacked ------------------------------------

@pytest.fixture
def finished(tmp_path, monkeypatch):
    """A FedAdam run of 3 rounds, finished: checkpoints round_2 and round_3 remain."""
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "run"
    assert cli.main(_argv("FedAdam", out, rounds=3)) == 0
    return out


def _resume(out, rounds=3, extra=()):
    return cli.main(_argv("FedAdam", out, rounds=rounds, extra=["--resume", *extra]))


def test_comm_round_may_grow_on_resume_and_gives_the_longer_run(finished, tmp_path):
    reference = tmp_path / "five"
    assert cli.main(_argv("FedAdam", reference, rounds=5)) == 0
    assert _resume(finished, rounds=5) == 0
    assert _sha(reference / "global_model.pt") == _sha(finished / "global_model.pt")
    assert (reference / "metrics.csv").read_text() == (finished / "metrics.csv").read_text()


def _tensorboard_scalars(out: Path) -> dict:
    """Every scalar TensorBoard shows for the run in out, as {tag: [(step, value)]}."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def test_tensorboard_shows_a_resumed_run_as_the_uninterrupted_one_each_round_once(tmp_path, monkeypatch, capsys):
    """A checkpoint is cut before its round's rows are complete, so the session that resumes it
    writes that round again; a finished run resumed evaluates its final model again. TensorBoard
    showed both points. Each session now starts at its first round, and TensorBoard drops what
    earlier sessions wrote from there on."""
    monkeypatch.chdir(tmp_path)
    with_tb = ["--set", "tracking_args.tensorboard=true"]
    reference, resumed = tmp_path / "five", tmp_path / "resumed"
    assert cli.main(_argv("FedAdam", reference, rounds=5, extra=with_tb)) == 0
    assert cli.main(_argv("FedAdam", resumed, rounds=3, extra=with_tb)) == 0
    capsys.readouterr()
    shown = [a for a in _argv("FedAdam", resumed, rounds=3, extra=[*with_tb, "--resume"]) if a != "--quiet"]
    assert cli.main(shown) == 0
    assert "all 3 rounds were done, evaluating the final model" in "".join(capsys.readouterr())
    assert cli.main(_argv("FedAdam", resumed, rounds=5, extra=[*with_tb, "--resume"])) == 0
    assert len(list((resumed / "tensorboard").iterdir())) == 3  # one event file per session
    expected, shown = _tensorboard_scalars(reference), _tensorboard_scalars(resumed)
    results = {t for t in expected if t.startswith("metric/") or t.endswith("/train_loss")}
    assert shown.keys() <= expected.keys() and results <= shown.keys()
    for tag, points in shown.items():
        steps = [step for step, _ in points]
        assert steps == sorted(set(steps)), f"{tag}: {steps}"
        if tag in results:
            assert points == expected[tag], tag
        else:  # times and bytes; a centre's wait for the message a resumed run begins with is unknown
            assert set(steps) <= {step for step, _ in expected[tag]}, tag


def test_a_config_that_changes_the_result_is_refused_naming_the_keys(finished, capsys):
    capsys.readouterr()
    assert _resume(finished, extra=["--set", "common_args.random_seed=6", "--set", "train_args.beta1=0.8"]) == 2
    err = capsys.readouterr().err
    assert "common_args.random_seed" in err and "train_args.beta1" in err and "Traceback" not in err
    assert "train_args.comm_round" not in err and err.count("flamby-mpi: error") == 1


def test_fewer_rounds_than_the_checkpoint_has_are_refused(finished, capsys):
    assert _resume(finished, rounds=2) == 2
    assert "at least 3" in capsys.readouterr().err


def test_a_truncated_newest_checkpoint_is_named_and_the_previous_one_used(finished, tmp_path, capsys):
    reference = tmp_path / "reference"
    assert cli.main(_argv("FedAdam", reference, rounds=3)) == 0
    victim = finished / "checkpoints" / "round_3" / "rank_2.pt"
    victim.write_bytes(victim.read_bytes()[:100])
    capsys.readouterr()
    assert _resume(finished) == 0
    shown = "".join(capsys.readouterr())
    assert str(victim) in shown and "truncated" in shown and "resumed from round 2" in shown
    assert _sha(reference / "global_model.pt") == _sha(finished / "global_model.pt")


def test_a_checkpoint_from_another_version_is_refused(finished, capsys):
    for manifest in (finished / "checkpoints").glob("round_*/manifest.json"):
        data = json.loads(manifest.read_text())
        data["flamby_mpi"] = "0.0.1"
        manifest.write_text(json.dumps(data))
    assert _resume(finished) == 2
    assert "written by flamby-mpi 0.0.1" in capsys.readouterr().err


def test_a_missing_rank_file_everywhere_is_refused(finished, capsys):
    for path in (finished / "checkpoints").glob("round_*/rank_3.json"):
        path.unlink()
    assert _resume(finished) == 2
    err = capsys.readouterr().err
    assert "no checkpoint is intact on every rank" in err and "rank_3.json: missing" in err


def test_resume_without_any_checkpoint_or_run_says_so(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    never = tmp_path / "never"
    assert cli.main(_argv("FedAvg", never, extra=["--resume"])) == 2
    assert f"--resume: {never} does not exist: there is no run there to continue" in capsys.readouterr().err
    assert not never.exists()  # nothing made: the same command without --resume starts afresh
    never.mkdir()
    (never / "notes.txt").write_text("the user's own")
    assert cli.main(_argv("FedAvg", never, extra=["--resume"])) == 2
    assert "holds no run (no checkpoint, no results.json)" in capsys.readouterr().err
    assert sorted(p.name for p in never.iterdir()) == ["notes.txt"]  # left as it was, no lock file either
    (never / ".flamby-mpi.lock").write_text("")  # a run killed before its first complete checkpoint
    (never / "checkpoints").mkdir()
    assert cli.main(_argv("FedAvg", never, extra=["--resume"])) == 2
    assert "no checkpoint in" in capsys.readouterr().err
    argv = ["--cf", str(DEFAULT_CONFIG), "--resume", *BASE]
    assert cli.main(argv) == 2
    assert "--resume needs to know which run to continue" in capsys.readouterr().err


def test_a_pickle_in_a_checkpoint_is_never_run(finished, tmp_path, capsys):
    """A .pt replaced by a pickle whose loading would create a file, its manifest entry forged to
    match: the checkpoint is refused (torch.load weights_only) in our words, and the file never appears."""
    import hashlib as h
    import pickle

    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    blob = pickle.dumps({"model": Payload()})
    for round_dir in (finished / "checkpoints").glob("round_*"):
        (round_dir / "rank_1.pt").write_bytes(blob)
        manifest = json.loads((round_dir / "manifest.json").read_text())
        manifest["files"]["1"]["rank_1.pt"] = {"sha256": h.sha256(blob).hexdigest(), "bytes": len(blob)}
        (round_dir / "manifest.json").write_text(json.dumps(manifest))
    assert _resume(finished) == 2
    shown = "".join(capsys.readouterr())
    assert "rank_1.pt: not readable as tensors" in shown and "Traceback" not in shown
    # torch's own message advises retrying with weights_only=False: never repeated for a file refused
    assert "not a tensor checkpoint written by flamby-mpi" in shown and "weights_only" not in shown
    assert not marker.exists()


def _mutations(manifest: dict):
    """Malformed manifests, generated: each top-level key removed, or given a value of each wrong type."""
    wrong = [None, 0, -1, 10 ** 30, "x", [], {}, 1.5, True]
    for key in manifest:
        yield f"without {key}", {k: v for k, v in manifest.items() if k != key}
        for value in wrong:
            if type(value) is not type(manifest[key]):
                yield f"{key}={value!r}", {**manifest, key: value}
    yield "a list", [manifest]
    yield "files of rank 1 not a dict", {**manifest, "files": {**manifest["files"], "1": "x"}}
    yield "an entry without sha256", {**manifest, "files": {**manifest["files"], "2": {
        "rank_2.pt": {"bytes": 1}, "rank_2.json": {"bytes": 1}}}}


def test_malformed_manifests_are_refused_with_one_message(finished, capsys):
    paths = sorted((finished / "checkpoints").glob("round_*/manifest.json"))
    original = {p: p.read_text() for p in paths}
    cases = list(_mutations(json.loads(original[paths[0]])))
    assert len(cases) >= 40
    for name, mutated in cases + [("not JSON", None), ("binary", b"\xff\x00\xfe")]:
        for path in paths:
            if mutated is None:
                path.write_text("{not json")
            elif isinstance(mutated, bytes):
                path.write_bytes(mutated)
            else:
                path.write_text(json.dumps(mutated))
        code = _resume(finished)
        err = capsys.readouterr().err
        assert code == 2, f"{name}: exit {code}\n{err}"
        assert "Traceback" not in err and err.count("flamby-mpi: error") == 1, f"{name}:\n{err}"
    for path, text in original.items():
        path.write_text(text)
    assert _resume(finished) == 0  # untouched again, it resumes (nothing else was changed)


def test_a_manifest_is_written_while_the_next_round_trains_and_no_rank_prunes_before_it(tmp_path, monkeypatch):
    """Rank 0 writes cut c's manifest in a thread of its own while round c + 1 trains, made slow here;
    meanwhile no rank may delete its part of the newest complete cut (a kill then would leave no
    checkpoint to resume): each rank learns that c is complete only once the manifest is on disk."""
    from flamby_mpi.checkpoints import checkpoint

    monkeypatch.chdir(tmp_path)
    out, seen = tmp_path / "run", []
    write_manifest = checkpoint.write_manifest

    def slow_write_manifest(output_dir, round_idx, *args, **kwargs):
        seen.append((round_idx, threading.current_thread() is threading.main_thread()))
        time.sleep(0.3)  # the clients reply and prune meanwhile (in process: within milliseconds)
        complete = [d for d in (out / "checkpoints").iterdir() if (d / "manifest.json").exists()]
        if complete:
            newest = max(complete, key=lambda d: int(d.name.split("_")[1]))
            named = json.loads((newest / "manifest.json").read_text())["files"]
            missing = [n for files in named.values() for n in files if not (newest / n).exists()]
            assert not missing, f"{newest.name} lost {missing} while round {round_idx}'s manifest was written"
        return write_manifest(output_dir, round_idx, *args, **kwargs)

    monkeypatch.setattr(checkpoint, "write_manifest", slow_write_manifest)
    assert cli.main(_argv("FedAvg", out, rounds=6, extra=["--set", "common_args.keep_checkpoints=1"])) == 0
    assert [r for r, _ in seen] == [1, 2, 3, 4, 5, 6]
    assert [main for _, main in seen] == [False] * 5 + [True]  # the last cut's manifest: before the job ends
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["round_6"]
