"""The command a run prints to continue it names the launcher as the user started it, so that it
runs as printed from the same directory (it always said `python launch_client.py`)."""
import sys

import pytest

from flamby_mpi import driver


@pytest.mark.parametrize("argv0, program", [
    ("/opt/flamby-mpi/launch_client.py", ["python", "/opt/flamby-mpi/launch_client.py"]),
    ("../flamby-mpi/launch_client.py", ["python", "../flamby-mpi/launch_client.py"]),
    ("launch_client.py", ["python", "launch_client.py"]),
    ("/venv/lib/python3.11/site-packages/flamby_mpi/__main__.py", ["python", "-m", "flamby_mpi"]),
    ("/venv/bin/flamby-mpi", ["flamby-mpi"]),
    ("/venv/bin/pytest", ["python", "launch_client.py"]),  # a run in process
])
def test_the_printed_command_starts_the_launcher_as_it_was_started(argv0, program, monkeypatch):
    monkeypatch.setattr(sys, "argv", [argv0, "--cf", "my config.yaml", "--run_id", "r1"])
    plan = type("Plan", (), {"run_id": "r1", "backend": "inprocess", "world_size": 5})()
    assert driver.resume_command(plan) == " ".join(
        [*program, "--cf", "'my config.yaml'", "--run_id", "r1", "--resume"])
