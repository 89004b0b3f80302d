"""The FedML boundary: what fedml_bridge.py relies on inside FedML 0.9.6 (flamby_mpi/transport/fedml_contract.py),
the MLOps stand-in's allowed list, the deferred FedML names, and the refusal of another FedML version.

The contract is checked on the installed FedML, then on a FedML changed with monkeypatch the way an
upgrade would change it (a private attribute renamed, a parameter added, a constant gone), where it
must name each change. No MPI job except the version refusal, which is a real mpiexec run."""
import subprocess
import sys
import textwrap
import threading

import pytest

from flamby_mpi.transport.fedml_bridge import contract_problems
from flamby_mpi.transport.fedml_imports import import_fedml_for
from support.mpi import REPO, run_mpi
from support.mpi import test_env as job_env

RECEIVE_THREAD = "fedml.core.distributed.communication.mpi.mpi_receive_thread.MPIReceiveThread"


def test_the_installed_fedml_meets_every_need_of_the_bridge():
    assert contract_problems() == []


@pytest.fixture
def fedml():
    import_fedml_for("server")
    import_fedml_for("client")
    import fedml.core.distributed.communication.message as message
    import fedml.core.distributed.communication.mpi.com_manager as com_manager
    import fedml.core.distributed.communication.mpi.mpi_receive_thread as receive_thread
    import fedml.cross_silo.server.fedml_aggregator as aggregator
    import fedml.cross_silo.server.fedml_server_manager as server_manager

    return message, com_manager, receive_thread, aggregator, server_manager


def _receive_thread_init_with_a_renamed_stop_event(self, comm, rank, size, name, q):
    threading.Thread.__init__(self)
    self._stop_requested = threading.Event()  # was self._stop_event
    self.comm, self.rank, self.size, self.name, self.q = comm, rank, size, name, q


def test_a_renamed_private_attribute_fails_the_contract_by_name(fedml, monkeypatch):
    _, com_manager, receive_thread, _, _ = fedml
    monkeypatch.setattr(receive_thread.MPIReceiveThread, "__init__",
                        _receive_thread_init_with_a_renamed_stop_event)
    problems = contract_problems()
    print("\n".join(problems))  # the failing-once output (pytest -s shows it)
    assert problems == [f"{RECEIVE_THREAD}.__init__ no longer sets self._stop_event "
                        f"(fedml_bridge.py reads or sets it)"]


def test_renamed_methods_changed_signatures_and_lost_constants_are_each_named(fedml, monkeypatch):
    message, com_manager, _, aggregator, server_manager = fedml
    manager = com_manager.MpiCommunicationManager
    monkeypatch.setattr(manager, "_notify_ready", manager._notify_connection_ready, raising=False)
    monkeypatch.delattr(manager, "_notify_connection_ready")
    original = aggregator.FedMLAggregator.__init__

    def init_with_one_more_parameter(self, train_global, test_global, val_global, all_train_data_num,
                                     train_data_local_dict, test_data_local_dict,
                                     train_data_local_num_dict, client_num, device, args,
                                     server_aggregator):
        original(self, train_global, test_global, all_train_data_num, train_data_local_dict,
                 test_data_local_dict, train_data_local_num_dict, client_num, device, args,
                 server_aggregator)

    monkeypatch.setattr(aggregator.FedMLAggregator, "__init__", init_with_one_more_parameter)
    monkeypatch.delattr(message.Message, "MSG_ARG_KEY_RECEIVER")

    def status_update_that_no_longer_calls_the_finished_handler(self, msg_params):
        self.process_online_status(None, msg_params)

    monkeypatch.setattr(server_manager.FedMLServerManager, "handle_message_client_status_update",
                        status_update_that_no_longer_calls_the_finished_handler)
    problems = "\n".join(contract_problems())
    print(problems)
    assert "MpiCommunicationManager._notify_connection_ready: missing" in problems
    assert ("FedMLAggregator.__init__: parameters are (self, train_global, test_global, val_global, "
            in problems)
    assert "Message.MSG_ARG_KEY_RECEIVER: missing" in problems
    assert ("FedMLServerManager.handle_message_client_status_update no longer uses "
            "self.process_finished_status" in problems)
    assert len(problems.splitlines()) == 4, problems


def test_the_mlops_allow_list_is_checked_against_fedmls_sources(fedml, monkeypatch):
    from flamby_mpi.transport import fedml_imports

    monkeypatch.setattr(fedml_imports, "MLOPS_CALLS",
                        (fedml_imports.MLOPS_CALLS - {"log_round_info"}) | {"log_everything"})
    problems = contract_problems()
    assert ("fedml_imports.MLOPS_CALLS allows 'log_everything', which FedML's fedml.core.mlops does "
            "not define") in problems
    assert ("fedml.cross_silo.server.fedml_server_manager calls mlops.log_round_info, which the MLOps "
            "stand-in does not allow (fedml_imports.MLOPS_CALLS)") in problems


def test_the_mlops_stand_in_does_what_fedml_calls_and_refuses_anything_else(fedml):
    from fedml import mlops
    from fedml.core import mlops as core_mlops

    assert mlops.event("server.wait", event_started=True, event_value="0") is None
    assert core_mlops.log_round_info(3, 0) is None
    for stand_in, name in ((mlops, "fedml.mlops"), (core_mlops, "fedml.core.mlops")):
        with pytest.raises(AttributeError, match=rf"{name}\.log_aggregaton_status: not in the MLOps "
                                                 r"stand-in's allowed list"):
            stand_in.log_aggregaton_status("RUNNING")  # misspelled
        with pytest.raises(AttributeError, match="not in the MLOps stand-in's allowed list"):
            _ = stand_in.init  # FedML's real function, but one a rank never calls
        assert not hasattr(stand_in, "__wrapped__")


def _python(code: str, home) -> str:
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=REPO, env=job_env(home),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def test_a_deferred_fedml_name_stands_for_the_real_class_once_used(tmp_path):
    # A fresh process: using the name loads FedML's defence code (torchvision and all).
    out = _python("""
        import sys
        from flamby_mpi.transport.fedml_imports import DeferredName, import_fedml_for
        import_fedml_for("server")
        from fedml.core.security.defense.krum_defense import KrumDefense
        name = "fedml.core.security.defense.krum_defense"
        assert isinstance(KrumDefense, DeferredName), KrumDefense
        assert sys.modules[name].__dict__.get("_flamby_mpi_hollow"), "loaded before use"
        assert not hasattr(sys.modules[name], "__wrapped__")  # a dunder probe loads nothing
        assert sys.modules[name].__dict__.get("_flamby_mpi_hollow"), "loaded by a probe"
        real = KrumDefense.real()
        assert real.__name__ == "KrumDefense" and real.__module__ == name
        assert not sys.modules[name].__dict__.get("_flamby_mpi_hollow")
        instance = object.__new__(real)
        assert isinstance(instance, KrumDefense) and issubclass(real, KrumDefense)
        assert not isinstance(object(), KrumDefense)
        class Mine(KrumDefense):
            pass
        assert Mine.__mro__[1] is real, Mine.__mro__
        print("ok")
    """, tmp_path)
    assert out.strip().endswith("ok")


def test_after_fedmls_own_full_import_a_rank_imports_use_that_fedml(tmp_path):
    # Other code in the process imported FedML the ordinary way: nothing is replaced under it.
    out = _python("""
        import fedml
        from fedml import mlops
        from flamby_mpi.transport.fedml_imports import import_fedml_for
        assert import_fedml_for("client") is fedml and import_fedml_for("server") is fedml
        import fedml.core.mlops
        assert not vars(mlops).get("_flamby_mpi_hollow") and not vars(fedml.core.mlops).get("_flamby_mpi_hollow")
        print("ok")
    """, tmp_path)
    assert out.strip().endswith("ok")


def _fake_fedml_metadata(directory, version: str):
    """A dist-info that importlib.metadata finds before the installed FedML's (PYTHONPATH first)."""
    info = directory / f"fedml-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: fedml\nVersion: {version}\n")
    return directory


def test_the_version_check_reads_metadata_without_importing_fedml(tmp_path):
    fake = _fake_fedml_metadata(tmp_path / "site", "0.9.7")
    code = """
        import sys
        from flamby_mpi.transport.fedml_imports import fedml_version_problem
        print(fedml_version_problem()); print("fedml" in sys.modules)
    """
    assert _python(code, tmp_path).splitlines() == ["None", "False"]
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=REPO, capture_output=True,
                          text=True, timeout=120,
                          env=job_env(tmp_path, {"PYTHONPATH": f"{fake}:{job_env(tmp_path)['PYTHONPATH']}"}))
    assert proc.stdout.splitlines() == [
        "flamby-mpi needs FedML 0.9.6, found 0.9.7: pip install fedml==0.9.6", "False"], proc.stderr


@pytest.mark.mpi
def test_another_fedml_version_is_refused_at_start_with_exit_2(workdir):
    cwd, home, marker = workdir
    fake = _fake_fedml_metadata(cwd / "site", "0.10.0")
    out = cwd / "out"
    job = run_mpi(2, ["--cf", str(REPO / "config" / "fedml_config.yaml"), "--run_id", marker,
                      "--set", f"common_args.output_dir={out}", "--set", "data_args.synthetic_num_centers=1"],
                  cwd, home, deadline_s=120,
                  env_extra={"PYTHONPATH": f"{fake}:{job_env(home)['PYTHONPATH']}"}, marker=marker)
    assert job.returncode == 2, job.output
    assert "flamby-mpi needs FedML 0.9.6, found 0.10.0: pip install fedml==0.9.6" in job.stderr
    assert "Traceback" not in job.output
    assert not out.exists()  # refused before anything of the run was written
    assert not job.leftovers, job.leftovers
