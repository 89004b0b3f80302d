"""Starting one process per terminal: `python launch_client.py --cf C --run_id R --rank K --role ROLE`.

With MPICH, two plain singletons cannot connect to each other, but processes
started as `mpiexec -n 1 ...` can: so a process started without any MPI
launcher re-executes itself once under `mpiexec -n 1` (the user still types
only the command above). Then the ranks meet through the rendezvous
(rendezvous.py) and the job continues exactly as under mpirun.
"""
from __future__ import annotations

import os
import shutil
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Callable, List, Optional

from ..exit.errors import UserError
from ..exit.failures import EXIT_FAILURE, EXIT_USER_ERROR, fail, where
from ..storage import run_directory
from . import join_config, liveness, rendezvous, run_secret
from .environment import started_by_mpi_launcher
from .world import World, form_world

# Set in the environment of the re-executed process so that it never re-executes again.
REEXEC_MARKER = "FLAMBY_MPI_REEXECUTED"
# After the join deadline, a client waits this much longer for the server's own verdict.
CLIENT_GRACE_S = 30.0


def find_mpiexec() -> Optional[str]:
    beside_python = Path(sys.executable).parent / "mpiexec"
    if beside_python.exists():
        return str(beside_python)
    return shutil.which("mpiexec")


def should_reexec(cli_rank: Optional[int]) -> bool:
    """True for a process started by hand (no MPI launcher) that names its rank.

    "By hand" includes a batch script's own commands (SLURM_PROCID=0 there is no rank) and
    PBS's own tasks: no MPI launcher wired them.
    """
    return cli_rank is not None and not started_by_mpi_launcher() and not os.environ.get(REEXEC_MARKER)


def reexec_under_mpiexec(argv: List[str]):
    """Replaces this process by `mpiexec -n 1 python <same program> <same arguments>`."""
    mpiexec = find_mpiexec()
    if mpiexec is None:
        raise UserError("starting one process per terminal needs the MPI launcher (mpiexec), which "
                        "was not found beside python nor on PATH",
                        hint='install the project as the README says (pip install -e ".[test]" brings mpich)')
    program = os.path.abspath(sys.argv[0])
    target = [program] if program.endswith(".py") and os.path.isfile(program) else ["-m", "flamby_mpi"]
    env = dict(os.environ, **{REEXEC_MARKER: "1"})
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(mpiexec, [mpiexec, "-n", "1", sys.executable, *target, *argv], env)


def _start_timer(seconds: float, action: Callable[[], None]) -> threading.Timer:
    timer = threading.Timer(seconds, action)
    timer.daemon = True
    timer.start()
    return timer


def _announcer(rank: int) -> Callable[[str], None]:
    def announce(message: str):
        prefix = "[flamby-mpi]" if rank == 0 else f"[flamby-mpi rank {rank}]"
        print(f"{prefix} {message}", flush=True)
    return announce


def join_world(plan, cli_rank: int) -> World:
    """Meets the other separately started ranks; returns a World ordered by --rank."""
    from mpi4py import MPI

    run_id, timeout = plan.run_id, plan.join_timeout_s
    files = rendezvous.RendezvousFiles(plan.rendezvous_dir, run_id)
    fingerprint, key_names = join_config.fingerprint_and_names(plan.config_yaml())
    announce = _announcer(cli_rank)
    deadline = time.monotonic() + timeout
    host = socket.gethostname()
    size = plan.world_size

    secret_file = plan.secret_file
    if cli_rank == 0:
        # Said now, not once every client has joined (up to comm_args.join_timeout_s later).
        refused = run_directory.refusal_ahead(plan.output_dir, plan.resume, plan.overwrite)
        if refused is not None:
            raise refused
        port = MPI.Open_port()
        publication = rendezvous.publish(files, port, secret_file, announce)

        def abandon(text):  # from a watching thread while MPI's Accept (which cannot time out) waits
            publication.close()
            fail(text, EXIT_USER_ERROR, where(cli_rank, host), end=os._exit)

        joining = rendezvous.ServerJoin(MPI, files, port, publication.secret, set(range(1, size)),
                                        fingerprint, announce, publication=publication, abandon=abandon,
                                        key_names=key_names)
        announce(f"run {run_id}: waiting up to {timeout:g} s for {size - 1} clients "
                 f"(rendezvous {files.info}); start each with: python launch_client.py --cf <config> "
                 f"--run_id {run_id} --rank K --role client")

        def timeout_message(missing):
            return (f"run {run_id}: rank(s) {', '.join(map(str, missing))} did not join within "
                    f"comm_args.join_timeout_s = {timeout:g} s (rendezvous {files.info})")

        def stuck():  # a client died between taking its turn and connecting: Accept never returns
            publication.close()
            fail(f"{timeout_message(joining.missing)}; a client stopped while connecting", EXIT_FAILURE,
                 where(cli_rank, host), end=os._exit)

        timer = _start_timer(timeout + CLIENT_GRACE_S, stuck)
        try:
            comm = joining.run(deadline, timeout_message)
        except BaseException:
            publication.close()
            raise
        finally:
            timer.cancel()
        announce(f"all {size - 1} clients joined")
        # The files stay (heartbeat on) while the run lives: a second server is refused meanwhile.
        world = form_world(comm, cleanups=[publication.close], joined_separately=True)
        _watch_peers(world, files, publication.secret, port)
        return world

    announce(f"run {run_id}: looking for the server in {files.info} (up to {timeout:g} s)")
    info = rendezvous.wait_for_server(files, deadline)

    def no_verdict():
        fail(f"run {run_id} did not start within comm_args.join_timeout_s = {timeout:g} s "
             f"(+{CLIENT_GRACE_S:g} s); the server at {info['host']} (pid {info['pid']}) stopped answering",
             EXIT_FAILURE, where(cli_rank, host), end=os._exit)

    timers = [_start_timer(max(0.0, deadline - time.monotonic()) + CLIENT_GRACE_S, no_verdict)]

    def joined(verdict):  # from now on the server's deadline counts (what was left of it), not our own
        timers[0].cancel()
        timers[0] = _start_timer(verdict.remaining_s + CLIENT_GRACE_S, no_verdict)

    port = info["port"]
    secret = _client_secret(files, secret_file, info)
    try:
        comm = rendezvous.client_join(MPI, port, secret, cli_rank, fingerprint,
                                      turn=rendezvous.connect_turn(files, secret, port, deadline + CLIENT_GRACE_S),
                                      on_joined=joined)
    except rendezvous.GaveUp as exc:  # before connecting: the server would wait for us until its deadline
        timers[0].cancel()
        rendezvous.leave_gave_up(files, secret, port, cli_rank, exc.args[0])
        raise
    timers[0].cancel()
    announce(f"joined run {run_id} as rank {cli_rank} (server on {info['host']})")
    world = form_world(comm, joined_separately=True)
    _watch_peers(world, files, secret, port)
    return world


def _client_secret(files: rendezvous.RendezvousFiles, secret_file, info) -> str:
    """The run's secret; a per-run secret file gone although its server was just seen alive is
    named as such (the server ended meanwhile, or something removed the file)."""
    try:
        return run_secret.for_client(files.secret, secret_file)
    except UserError:
        if run_secret.from_environment() is None and not secret_file and not os.path.lexists(files.secret):
            raise UserError(f"the secret file {files.secret} of the server published in {files.info} "
                            f"(pid {info['pid']} on {info['host']}) disappeared while this client was joining: "
                            "that server ended, or something removed the file",
                            hint="start the server again, then this client; leave the rendezvous directory "
                                 "to the run while it starts") from None
        raise


def _watch_peers(world: World, files: rendezvous.RendezvousFiles, secret: str, port: str):
    """No launcher ends this job when a rank dies (each rank has its own mpiexec): the ranks watch
    each other's heartbeats until the end of the run (liveness.py)."""
    at = where(world.rank, world.host)
    liveness.watch(world, files, secret, port, report=lambda text: fail(text, EXIT_FAILURE, at))
