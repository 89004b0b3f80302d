"""flamby_mpi/runtime/torch_without_meta_kernels.py: a rank imports torch without running its Python
meta kernels, and they run, the same registrations, as soon as anything may use them. Each case is
a fresh Python process started as a rank's entry point starts (install() before torch's import).
That a rank trains to the same bits either way: tests/test_deferred_dataset_imports.py."""
import functools
import json
import os
import subprocess
import sys
import textwrap

import pytest

from support.mpi import REPO, TESTS_DIR

PRELUDE = """
import importlib.util, json, sys
from flamby_mpi.runtime import torch_without_meta_kernels as meta
installed = meta.install()
import torch
from flamby_mpi.runtime import optim_without_dynamo
optim_without_dynamo.install()  # as the driver does: its stand-in looks up torch._dynamo's spec
def loaded(prefix):
    return any(m == prefix or m.startswith(prefix + ".") for m in sys.modules)
def meta_histc_works():  # histc has a Python meta kernel only
    try:
        torch.histc(torch.empty(10, device="meta"))
        return True
    except NotImplementedError:
        return False
"""


def _run(code: str) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(TESTS_DIR), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", PRELUDE + textwrap.dedent(code)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_torch_is_imported_without_them_and_a_look_at_a_spec_does_not_run_them():
    found = _run("""
        importlib.util.find_spec("torch._decomp"); importlib.util.find_spec("opacus")
        print(json.dumps({"installed": installed, "standing_in": meta.standing_in(),
                          "decomp": loaded("torch._decomp"), "refs": loaded("torch._refs"),
                          "prims": loaded("torch._prims"),
                          "generator": torch.randn(2, generator=torch.Generator().manual_seed(1)).tolist(),
                          "histc": meta_histc_works(),
                          "cpu_histc": torch.histc(torch.arange(10.0), bins=2).tolist()}))
    """)
    assert found["installed"] and found["standing_in"]
    assert not (found["decomp"] or found["refs"] or found["prims"])
    # torch.Generator needs the metaclass torch._prims.rng_prims sets (torch 2.14), which the stand-in sets
    assert found["generator"] == pytest.approx([0.6614, 0.2669], abs=1e-4)
    # A meta-device operator whose kernel is one of theirs says so; a CPU one is untouched.
    assert found["histc"] is False and found["cpu_histc"] == [5.0, 5.0]


@pytest.mark.parametrize("trigger", [
    "import torch._decomp",
    "torch._meta_registrations.activate_meta",  # an attribute of the stand-in
    "torch._dynamo.reset",  # the real torch._dynamo, through optim_without_dynamo's stand-in (compilation)
    "from flamby_mpi.runtime import torch_without_meta_kernels; torch_without_meta_kernels.load()",
])
def test_they_run_as_soon_as_something_may_use_them(trigger):
    found = _run(f"""
        {trigger}
        module = sys.modules["torch._meta_registrations"]
        print(json.dumps({{"standing_in": meta.standing_in(), "histc": meta_histc_works(),
                          "bound": torch._meta_registrations is module,
                          "has_activate": hasattr(module, "activate_meta"),
                          "decomp_loader": type(sys.modules["torch._decomp"].__loader__).__name__,
                          "decomp_spec_loader": type(sys.modules["torch._decomp"].__spec__.loader).__name__,
                          "decompositions": len(sys.modules["torch._decomp"].decomposition_table),
                          "generator_opaque": torch._C.Generator in torch._library.opaque_object._OPAQUE_TYPES,
                          "generator": torch.randn(2, generator=torch.Generator().manual_seed(1)).tolist(),
                          "finder_left": any(type(f).__name__ == "_LoadFirst" for f in sys.meta_path)}}))
    """)
    assert not found["standing_in"] and found["histc"] and found["bound"] and found["has_activate"]
    assert found["decomp_loader"] == found["decomp_spec_loader"] == "SourceFileLoader" and not found["finder_left"]
    # one torch._decomp, holding what torch's own import registers (imported first, it was once
    # made twice, the second copy's tables empty)
    assert found["decompositions"] == _plain_torch("len(torch._decomp.decomposition_table)")
    # what torch._prims.rng_prims does beyond the stand-in's metaclass: torch.compile's record of it
    assert found["generator_opaque"] and found["generator"] == pytest.approx([0.6614, 0.2669], abs=1e-4)


def test_opacus_import_runs_them():
    pytest.importorskip("opacus", reason="opacus is not installed")
    found = _run("""
        import opacus
        print(json.dumps({"standing_in": meta.standing_in(), "histc": meta_histc_works()}))
    """)
    assert not found["standing_in"] and found["histc"]


def test_a_users_dataset_module_gets_them_and_flambys_do_not_need_them():
    found = _run("""
        from flamby_mpi.config import load_config
        from flamby_mpi.plan import make_plan
        cf = "config/fedml_config.yaml"
        make_plan(load_config(cf, ["data_args.dataset=synthetic"]))
        synthetic = meta.standing_in()
        make_plan(load_config(cf, ["data_args.dataset=support.batchnorm_dataset"]))
        print(json.dumps({"synthetic": synthetic, "user": meta.standing_in(), "histc": meta_histc_works()}))
    """)
    assert found["synthetic"] is True
    assert found["user"] is False and found["histc"]


def test_nothing_is_stood_in_once_torch_is_imported():
    import torch  # noqa: F401 - this test process has torch, as a library user's would

    from flamby_mpi.runtime import torch_without_meta_kernels

    assert torch_without_meta_kernels.install() is False
    assert not torch_without_meta_kernels.standing_in()


def test_it_acts_only_on_the_torch_pyproject_pins():
    from flamby_mpi.runtime import optim_without_dynamo, torch_without_meta_kernels

    assert torch_without_meta_kernels.TESTED_TORCH == optim_without_dynamo.TESTED_TORCH  # the pinned releases
    assert torch_without_meta_kernels.tested_torch()
    found = _run_before_torch("""
        meta.TESTED_TORCH = ("1.0",)
        print(json.dumps({"installed": meta.install()}))
    """)
    assert found["installed"] is False


def _run_before_torch(code: str) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    script = "import json\nfrom flamby_mpi.runtime import torch_without_meta_kernels as meta\n" + textwrap.dedent(code)
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@functools.lru_cache(maxsize=None)  # the same for every case: one fresh torch import, not one per case
def _plain_torch(expression: str):
    """expression's value in a fresh process that imports torch as torch ships it."""
    done = subprocess.run([sys.executable, "-c", f"import torch, torch._decomp\nprint({expression})"], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    return int(done.stdout.strip().splitlines()[-1])
