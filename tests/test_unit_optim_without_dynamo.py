"""flamby_mpi/runtime/optim_without_dynamo.py: optimizers step without importing torch._dynamo, and a real
torch.compile of a model and of a training step with an optimizer step inside still works, with
the same bits as without the shortcut; it acts only on the torch and Python it was tested on, which
pyproject.toml pins. Each case runs in a fresh process: install() changes torch for the process."""
import json
import shutil
import sys
import textwrap
import tomllib

import pytest

from flamby_mpi.runtime import optim_without_dynamo
from support.mpi import REPO
from support.mpi import test_env as job_env
from support.side_by_side import run_side_by_side

TRAIN = """
    import hashlib, json, sys, torch
    from flamby_mpi.runtime import optim_without_dynamo
    installed = optim_without_dynamo.install() if {install} else False
    dynamo_before = "torch._dynamo" in sys.modules and not getattr(sys.modules["torch._dynamo"],
                                                                   "_flamby_mpi_hollow", False)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
    opt = torch.optim.Adam(model.parameters(), lr=0.01, weight_decay=0.01)

    def train_step(x):
        opt.zero_grad()
        loss = model(x).pow(2).mean()
        loss.backward()
        opt.step()
        return loss

    step = torch.compile(train_step, backend={backend!r})
    forward = torch.compile(model, backend={backend!r})
    outputs = []
    for _ in range(3):
        x = torch.randn(4, 8)
        step(x)
        outputs.append(forward(x).detach())
    digest = hashlib.sha256(b"".join(t.detach().numpy().tobytes() for t in [*outputs, *model.parameters()]
                                     if t is not None)).hexdigest()
    # The caches install() filled are torch's own entries again once torch._dynamo is real.
    wrapped = [m.__wrapped__ for m in vars(torch.optim.Optimizer).values() if hasattr(m, "__wrapped__")]
    shortcut_left = [m.__name__ for m in wrapped if getattr(m, "__dynamo_disable", None) is m]
    print(json.dumps({{"installed": installed, "dynamo_before": dynamo_before, "digest": digest,
                       "shortcut_left": shortcut_left}}))
"""


def _python(code: str, home) -> dict:
    return _python_side_by_side([code], home)[0]


def _python_side_by_side(codes, home) -> list:
    """What each fresh process printed last, as JSON; the processes run at once (a compilation
    with inductor takes half a minute of one core)."""
    found = run_side_by_side([[sys.executable, "-c", textwrap.dedent(code)] for code in codes], 600, cwd=REPO,
                             env=job_env(home))
    for proc in found:
        assert proc.returncode == 0, proc.stdout + proc.stderr
    return [json.loads(proc.stdout.strip().splitlines()[-1]) for proc in found]


@pytest.mark.parametrize("backend", [
    "eager",
    # torch.compile's default backend, the one users get: it generates and compiles code, so it is
    # slow, and it stays in CI (eager alone would not run the optimizer step through codegen).
    pytest.param("inductor", marks=[pytest.mark.slow, pytest.mark.skipif(
        not (shutil.which("cc") or shutil.which("gcc")), reason="inductor compiles C++: no compiler here")]),
])
def test_a_compiled_model_and_optimizer_step_give_the_same_bits_with_the_shortcut(backend, tmp_path):
    with_shortcut, without = _python_side_by_side([TRAIN.format(install=True, backend=backend),
                                                   TRAIN.format(install=False, backend=backend)], tmp_path)
    assert with_shortcut["installed"] and not with_shortcut["dynamo_before"]
    assert with_shortcut["shortcut_left"] == []
    assert with_shortcut["digest"] == without["digest"]


def test_the_shortcut_acts_only_on_the_tested_torch_and_python():
    assert optim_without_dynamo.applies("2.14.1")
    assert optim_without_dynamo.applies("2.14.0+cpu", python=(3, 12))
    assert not optim_without_dynamo.applies("2.14.1", python=(3, 10))  # no code.co_qualname
    assert not optim_without_dynamo.applies("2.15.0")
    assert not optim_without_dynamo.applies("2.13.1")


def test_on_an_untested_torch_install_does_nothing_and_steps_import_torch_dynamo(tmp_path):
    found = _python("""
        import json, sys, torch
        from flamby_mpi.runtime import optim_without_dynamo
        optim_without_dynamo.TESTED_TORCH = ()
        installed = optim_without_dynamo.install()
        model = torch.nn.Linear(3, 2)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        model(torch.randn(4, 3)).sum().backward(); opt.step()
        print(json.dumps({"installed": installed, "dynamo": "torch._dynamo" in sys.modules}))
    """, tmp_path)
    assert found == {"installed": False, "dynamo": True}


def test_pyproject_pins_torch_to_the_tested_releases():
    import torch

    pins = [d for d in tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
            if d.split(">")[0].split("<")[0].split("=")[0].strip() == "torch"]
    (tested,) = optim_without_dynamo.TESTED_TORCH
    major, minor = map(int, tested.split("."))
    assert pins == [f"torch>={major}.{minor},<{major}.{minor + 1}"]
    assert optim_without_dynamo.applies(torch.__version__)  # the tests here run on the tested torch
