"""Unit tests of flamby_mpi.launch.liveness: what counts as a sign of life, driven by a fake clock."""
import json

from flamby_mpi.launch import liveness
from flamby_mpi.launch.liveness import LOST_AFTER_S, Liveness
from flamby_mpi.launch.rendezvous import RendezvousFiles

SECRET, PORT = "s" * 32, "tag#0$port#1234$"


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def _pair(tmp_path, size=3, secret=SECRET, port=PORT):
    files = RendezvousFiles(tmp_path, "run1")
    clock = Clock()
    server = Liveness(files, SECRET, PORT, 0, size, clock)
    clients = [Liveness(files, secret, port, k, size, clock) for k in range(1, size)]
    return server, clients, clock


def test_a_peer_that_keeps_beating_is_never_lost(tmp_path):
    server, clients, clock = _pair(tmp_path)
    for _ in range(40):
        for c in clients:
            c.beat()
        server.beat()
        clock.now += 1.0
        assert server.check() is None and all(c.check() is None for c in clients)


def test_a_client_that_stops_is_lost_after_the_limit_and_named(tmp_path):
    server, (c1, c2), clock = _pair(tmp_path)
    c1.beat()
    c2.beat()
    assert server.check() is None
    c1.beat()
    clock.now += LOST_AFTER_S - 0.5
    assert server.check() is None
    c1.beat()
    clock.now += 1.0  # c2 silent for LOST_AFTER_S + 0.5 s, c1 beat 1 s ago
    loss = server.check()
    assert loss is not None and [rank for rank, _ in loss.ranks] == [2] and not loss.relayed
    assert "lost rank 2 (client, host " in loss.text() and f"for {LOST_AFTER_S:g} s" in loss.text()


def test_the_server_relays_a_loss_to_the_clients(tmp_path):
    server, (c1, c2), clock = _pair(tmp_path)
    server.beat()
    assert c1.check() is None
    server.relay(liveness.Loss(ranks=((2, "client, host h, pid 7"),), relayed=False))
    loss = c1.check()
    assert loss is not None and loss.relayed and loss.ranks == ((2, "client, host h, pid 7"),)
    assert "lost rank 2 (client, host h, pid 7): rank 0 reports" in loss.text()


def test_a_silent_server_is_lost_even_if_never_heard_from(tmp_path):
    server, (c1, _), clock = _pair(tmp_path)
    clock.now += LOST_AFTER_S + 1
    loss = c1.check()
    assert loss.ranks == ((0, "server, never heard from"),)


def _silent_for_the_limit_despite(tmp_path, write):
    """True when the server counts client 1 lost although `write(path)` kept rewriting its file."""
    tmp_path.mkdir(exist_ok=True)
    server, (c1, c2), clock = _pair(tmp_path, size=3)
    c1.beat()
    c2.beat()
    assert server.check() is None
    for _ in range(int(LOST_AFTER_S) + 2):
        clock.now += 1.0
        c2.beat()
        write(c1.path(1))
        loss = server.check()
        if loss is not None:
            return [rank for rank, _ in loss.ranks] == [1]
    return False


def test_forged_replayed_or_foreign_heartbeats_are_no_sign_of_life(tmp_path):
    # Without the secret: a well-formed file with an ever-growing counter and a made-up proof.
    counter = iter(range(100, 10 ** 6))

    def forged(path):
        path.write_text(json.dumps({"rank": 1, "count": next(counter), "host": "h", "pid": 1, "lost": [],
                                    "proof": "0" * 64}))
    assert _silent_for_the_limit_despite(tmp_path / "a", forged)

    # A real heartbeat recorded once and written back again and again.
    (tmp_path / "b").mkdir()
    recorder = Liveness(RendezvousFiles(tmp_path / "b", "run1"), SECRET, PORT, 1, 3)
    recorder.beat()
    recorded = recorder.path(1).read_bytes()
    assert _silent_for_the_limit_despite(tmp_path / "b", lambda path: path.write_bytes(recorded))

    # Heartbeats of an earlier run with the same run id (another MPI port), or another secret.
    (tmp_path / "c").mkdir()
    (tmp_path / "d").mkdir()
    earlier = Liveness(RendezvousFiles(tmp_path / "c", "run1"), SECRET, "tag#0$port#999$", 1, 3)
    assert _silent_for_the_limit_despite(tmp_path / "c", lambda path: earlier.beat())
    other = Liveness(RendezvousFiles(tmp_path / "d", "run1"), "x" * 32, PORT, 1, 3)
    assert _silent_for_the_limit_despite(tmp_path / "d", lambda path: other.beat())

    # Bytes that are not JSON, more than the 16 KiB read.
    assert _silent_for_the_limit_despite(tmp_path / "e", lambda path: path.write_bytes(b"\x80" * 20000))


def test_the_control_is_real_a_true_heartbeat_writer_keeps_the_peer_alive(tmp_path):
    files = RendezvousFiles(tmp_path, "run1")
    real = Liveness(files, SECRET, PORT, 1, 3)
    assert not _silent_for_the_limit_despite(tmp_path, lambda path: real.beat())


def test_close_removes_this_ranks_file_and_clients_gone_sees_it(tmp_path):
    server, (c1, c2), clock = _pair(tmp_path)
    c1.beat()
    c2.beat()
    loss = liveness.Loss(ranks=((2, "client"),), relayed=False)
    assert not server.clients_gone(loss)
    c1.close()
    assert not c1.path(1).exists() and server.clients_gone(loss)
