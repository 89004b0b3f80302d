"""Which tests a run selects (tests/conftest.py): a plain `python -m pytest`, what CI runs, leaves
out exactly the heavy tests and nothing else; `-m heavy`, their node ids or FLAMBY_MPI_HEAVY=1 bring
them in; a `-m` of one's own does not. Real pytest processes collecting the real suite."""
import os
import sys
from pathlib import Path

import pytest

from support.side_by_side import run_side_by_side

REPO = Path(__file__).resolve().parents[1]
WIRE, STARTUP, STANDIN_3D = "tests/test_wire.py", "tests/test_startup.py", "tests/test_standin_3d.py"
IMAGE_MODES = "tests/test_image_launch_modes.py"
LOADER_WORKERS = "tests/test_unit_loader_workers.py"
DEFERRED_DATASETS = "tests/test_deferred_dataset_imports.py"
HEAVY = {f"{WIRE}::test_a_model_over_2_gib_trains_with_two_clients",
         f"{STARTUP}::test_64_synthetic_centres_complete_within_the_memory_of_one_machine",
         f"{STANDIN_3D}::test_lidc_idri_standin_is_read_by_flamby_for_every_centre",
         f"{STANDIN_3D}::test_kits19_one_round_under_mpi_equals_the_in_process_twin",
         f"{STANDIN_3D}::test_lidc_idri_one_round_under_mpi_equals_the_in_process_twin",
         f"{IMAGE_MODES}::test_fed_ixi_unet_with_batchnorm_and_adamw_stopped_and_resumed_in_process_is_bitwise",
         f"{LOADER_WORKERS}::test_fed_ixi_standin_two_workers_zero_workers_same_batches",
         f"{DEFERRED_DATASETS}::test_fed_ixi_without_its_unused_imports_builds_the_same_data_and_model"}

pytestmark = pytest.mark.timeout(300)


def _collected(*args, heavy_env=False):
    return _collections((args, heavy_env))[0]


def _collections(*asked):
    """The node ids each (args, heavy_env) collects, the collections run side by side (each
    imports the whole suite, some 20 s of one core)."""
    commands, envs = [], []
    for args, heavy_env in asked:
        env = {k: v for k, v in os.environ.items() if k != "FLAMBY_MPI_HEAVY"}
        if heavy_env:
            env["FLAMBY_MPI_HEAVY"] = "1"
        commands.append([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", *args])
        envs.append(env)
    found = []
    for done in run_side_by_side(commands, 240, cwd=REPO, envs=envs):
        assert done.returncode == 0, done.stdout + done.stderr  # 5 would be "no tests ran"
        found.append({line for line in done.stdout.splitlines() if "::" in line})
    return found


def _functions(node_ids):
    """Node ids without their parameters: some parameter ids are random bytes, new in every process."""
    return {node_id.partition("[")[0] for node_id in node_ids}


def test_a_plain_run_leaves_out_exactly_the_heavy_tests():
    plain, everything = _collections(((), False), ((), True))
    assert _functions(everything) - _functions(plain) == HEAVY
    assert len(everything) - len(plain) == len(HEAVY)
    assert len(plain) > 1000  # the suite itself, not a selection of it


def test_heavy_tests_run_when_asked_for_by_marker_or_node_id():
    named = sorted(HEAVY)[0]
    by_marker, by_node_id = _collections(
        ((WIRE, STARTUP, STANDIN_3D, IMAGE_MODES, LOADER_WORKERS, DEFERRED_DATASETS, "-m", "heavy"), False),
        ((named,), False))
    assert by_marker == HEAVY
    assert by_node_id == {named}


def test_a_marker_expression_of_ones_own_does_not_bring_in_heavy_tests():
    not_slow = _collected(WIRE, STARTUP, STANDIN_3D, IMAGE_MODES, "-m", "not slow")
    assert not_slow and not not_slow & HEAVY
