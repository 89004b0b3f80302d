"""flamby_mpi/runtime/import_gc.py: the collector held off during a rank's imports, then back on with
the imports' objects frozen, and left alone where the process did not pause it itself. Each case is
a fresh Python process, as the state is the interpreter's. That a real run's ranks make no full
pass while importing and train with the collector on: tests/test_startup.py."""
import json
import os
import subprocess
import sys
import textwrap

import pytest

from support.mpi import REPO


def _run(code: str) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    script = "import gc, json\nfrom flamby_mpi.runtime import import_gc\n" + textwrap.dedent(code)
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_paused_for_the_imports_then_on_with_their_objects_frozen():
    found = _run("""
        import_gc.pause()
        off = not gc.isenabled()
        import decimal, email.parser, json.decoder, xml.dom.minidom  # noqa: F401 - objects to freeze
        cycle = []; cycle.append(cycle); del cycle  # garbage a full pass would find
        import_gc.resume(); import_gc.resume()  # the second call changes nothing
        state = import_gc.state()
        fresh = []; fresh.append(fresh); del fresh
        print(json.dumps({"off": off, "state": state, "collected": gc.collect()}))
    """)
    assert found["off"]
    assert found["state"]["enabled"] and found["state"]["frozen"] > 1000
    assert found["state"]["full_passes_while_paused"] == 0
    assert found["collected"] >= 1  # cycles made after the resume are the collector's again


@pytest.mark.parametrize("before", ["gc.disable()", ""])
def test_a_process_that_did_not_pause_it_keeps_its_collector_as_it_was(before):
    found = _run(f"""
        {before}
        was = gc.isenabled()
        if not was:
            import_gc.pause()  # already off: not ours to turn on
        import_gc.resume()  # e.g. flamby_mpi.cli.main called inside a test or a library user's process
        print(json.dumps({{"was": was, "now": gc.isenabled(), "frozen": gc.get_freeze_count(),
                          "state": import_gc.state()}}))
    """)
    assert found["now"] == found["was"] and found["frozen"] == 0
    assert found["state"]["full_passes_while_paused"] is None


def test_a_users_dataset_module_is_imported_with_the_collector_on():
    # It may make cyclic garbage as it is imported: none of it is frozen. FLamby's and the built-in
    # dataset leave the collector off until cli.main has the plan.
    found = _run("""
        import sys
        sys.path.insert(0, "tests")
        from flamby_mpi.config import load_config
        from flamby_mpi.plan import make_plan
        import_gc.pause()
        make_plan(load_config("config/fedml_config.yaml", ["data_args.dataset=synthetic"]))
        synthetic = import_gc.paused()
        make_plan(load_config("config/fedml_config.yaml", ["data_args.dataset=support.batchnorm_dataset"]))
        print(json.dumps({"synthetic": synthetic, "user": import_gc.paused(), "on": gc.isenabled()}))
    """)
    assert found == {"synthetic": True, "user": False, "on": True}
