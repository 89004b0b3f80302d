"""What a rank imports for Fed-IXI and Fed-ISIC2019 (flamby_mpi/datasets/deferred_imports.py,
BY_DATASET) leaves out what FLamby's own import loads and a run never uses (all of monai but six
transforms, torchvision, matplotlib, pydicom; albumentations' domain adaptation with qudida and
sklearn.decomposition, every scikit-learn metric but one, scipy.stats), and builds the same bits:
every centre's train and test sets item by item, the seeded Baseline and its
output, the loss, the metric, one training step's weights, and the global random generators after
all of it. The rank's side also runs, as a rank does, without torch's Python meta kernels
(flamby_mpi/runtime/torch_without_meta_kernels.py), which FLamby's plain import runs; Fed-Heart-
Disease, on its real files, is compared the same way for that alone.

Each side runs in a fresh Python process on stand-in data (scripts/standin_data.py): "plain"
imports FLamby's module as FLamby's own benchmark does, "deferred" as a rank does.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from support.isic_flamby import flamby_with_small_split
from support.mpi import REPO
from support.paths import SHARED_DATA
from support.side_by_side import run_side_by_side
from support.standin_runs import write_standin

pytest.importorskip("flamby", reason="FLamby is not installed")

DIGEST = textwrap.dedent("""
    import hashlib, importlib, json, random, sys
    name, data_path, how = sys.argv[1:4]
    if how != "plain":  # as a rank's entry point does, before anything imports torch
        from flamby_mpi.runtime import torch_without_meta_kernels
        assert torch_without_meta_kernels.install()
    import numpy as np
    import torch
    torch.set_num_threads(1)  # a backward pass on 2 threads may sum in either order; a rank on a full host has 1
    if how != "plain":  # as the driver does: an optimizer step would import torch._dynamo
        from flamby_mpi.runtime import optim_without_dynamo
        optim_without_dynamo.install()
    if how == "plain":
        module = importlib.import_module("flamby.datasets." + name)
    else:
        from flamby_mpi.datasets.flamby_datasets import import_flamby_dataset
        module = import_flamby_dataset(name)
    from flamby_mpi.runtime.startup import loaded_modules
    after_import = loaded_modules()
    digest = hashlib.sha256()

    def add(value):
        if isinstance(value, torch.Tensor):
            digest.update(str((value.dtype, tuple(value.shape))).encode())
            digest.update(value.detach().contiguous().numpy().tobytes())
        elif isinstance(value, (tuple, list)):
            for item in value:
                add(item)
        else:
            digest.update(repr(value).encode())

    def seed(n):  # FLamby's augmentations draw from Python's, numpy's and torch's generators
        random.seed(n); np.random.seed(n); torch.manual_seed(n)

    sets = [dict(center=c, train=t) for c in range(module.NUM_CLIENTS) for t in (True, False)]
    first = None
    for n, kwargs in enumerate(sets):
        seed(n)
        data = module.FedClass(data_path=data_path, **kwargs)
        add(len(data))
        for i in range(len(data)):
            seed(1000 * n + i)
            item = data[i]
            add(item)
            first = item if first is None else first
    seed(7)
    model = module.Baseline()
    for key, tensor in model.state_dict().items():
        digest.update(key.encode()); add(tensor)
    model.eval()
    with torch.no_grad():
        x = first[0].unsqueeze(0)
        output = model(x)
    add(output)
    y = first[1].unsqueeze(0)
    add(module.BaselineLoss()(output, y))
    add(float(module.metric(y.numpy(), output.numpy())))
    model.train()  # one training step: the gradients and the updated weights
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    module.BaselineLoss()(model(x), y).backward()
    optimizer.step()
    for key, tensor in model.state_dict().items():
        digest.update(key.encode()); add(tensor)
    add(random.getstate()); add(np.random.get_state()[1].tobytes()); add(torch.get_rng_state())
    meta_kernels_run = "torch._meta_registrations" in sys.modules and not (
        how != "plain" and torch_without_meta_kernels.standing_in())
    print(json.dumps({"digest": digest.hexdigest(), "after_import": after_import, "modules": loaded_modules(),
                      "meta_kernels_run": meta_kernels_run}))
""")


def _digests(name, data_path, env):
    """(plain, deferred), computed side by side (each process mostly imports)."""
    results = []
    for how, done in zip(("plain", "deferred"), run_side_by_side(
            [[sys.executable, "-c", DIGEST, name, str(data_path), how] for how in ("plain", "deferred")],
            300, cwd=REPO, env={**os.environ, **env}), strict=True):
        assert done.returncode == 0, f"{how}: {done.stderr[-3000:]}"
        results.append(json.loads(done.stdout.strip().splitlines()[-1]))
    return results


def _loaded(modules, name):
    return [m for m in modules if m == name or m.startswith(name + ".")]


def _assert_same_bits_without(name, data_path, env, left_out, still_loaded=()):
    plain, ours = _digests(name, data_path, env)
    assert ours["digest"] == plain["digest"]
    # A rank trains without torch's Python meta kernels ever running (runtime/torch_without_meta_kernels.py),
    # to the same bits as FLamby's plain import, which runs them.
    assert plain["meta_kernels_run"] and not ours["meta_kernels_run"]
    for unused in left_out:
        assert _loaded(plain["after_import"], unused), unused  # what FLamby's own import loads...
        assert not _loaded(ours["modules"], unused), unused  # ...and a run of this dataset never does
    for used in still_loaded:  # what the run does use, loaded once used
        assert not _loaded(ours["after_import"], used) and _loaded(ours["modules"], used), used
    return plain, ours


@pytest.mark.heavy  # 50 s on the shared 2-core machine: FLamby's own import of monai alone takes several
def test_fed_ixi_without_its_unused_imports_builds_the_same_data_and_model(tmp_path):
    pytest.importorskip("monai", reason="FLamby's ixi extra (monai) is not installed")
    data = tmp_path / "ixi"
    write_standin("fed_ixi", data)
    _assert_same_bits_without("fed_ixi", data, {}, left_out=(
        "monai.networks.nets", "monai.apps.datasets", "monai.bundle", "torchvision", "torch._dynamo",
        "matplotlib", "seaborn", "pydicom", "skimage.morphology", "scipy.signal", "onnx", "torch._decomp"))


def test_fed_isic2019_without_its_unused_imports_builds_the_same_data_and_model(tmp_path):
    albumentations = pytest.importorskip("albumentations",
                                         reason="FLamby's isic2019 extra (albumentations) is not installed")
    pytest.importorskip("efficientnet_pytorch",
                        reason="FLamby's isic2019 extra (efficientnet-pytorch) is not installed")
    if not hasattr(albumentations, "Flip"):
        pytest.skip("FLamby's Fed-ISIC2019 training transforms need albumentations.Flip (albumentations==1.4.0)")
    site = flamby_with_small_split(tmp_path / "site")
    data = tmp_path / "isic"
    env = {"PYTHONPATH": os.pathsep.join([str(site), str(REPO), os.environ.get("PYTHONPATH", "")]),
           "NO_ALBUMENTATIONS_UPDATE": "1"}
    done = subprocess.run([sys.executable, str(REPO / "scripts" / "standin_data.py"), "fed_isic2019", str(data)],
                          capture_output=True, text=True, timeout=300, env={**os.environ, **env})
    assert done.returncode == 0, done.stdout + done.stderr
    env["TORCH_HOME"] = str(data / "standin_torch_home")  # Baseline() loads the stand-in's EfficientNet weights
    _assert_same_bits_without(
        "fed_isic2019", data, env,
        left_out=("qudida", "sklearn.decomposition",
                  "albumentations.augmentations.domain_adaptation", "sklearn.metrics._ranking", "scipy.stats",
                  "matplotlib", "torch._decomp"),
        # loaded when the sets are built and the metric is computed, no sooner
        still_loaded=("albumentations.core.composition", "sklearn.metrics._classification"))


def test_fed_heart_disease_without_torchs_meta_kernels_builds_and_trains_the_same_bits():
    data = SHARED_DATA / "fed_heart_disease"
    if not (data / "processed.cleveland.data").exists():
        pytest.skip(f"FLamby's Fed-Heart-Disease files are not in {data}")
    _assert_same_bits_without("fed_heart_disease", data, {}, left_out=("torch._decomp", "torch._refs"))
