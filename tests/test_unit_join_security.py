"""The join's defences without MPI: which secret files are trusted, proofs, malformed messages, run ids."""
import json
import os
import random
import time

import pytest

from flamby_mpi.config import build_config
from flamby_mpi.exit.errors import ConfigError, UserError
from flamby_mpi.launch import handshake, rendezvous, run_secret

SECRET = "a" * 32


# --- which secret a rank trusts ------------------------------------------------------------------

def test_server_creates_a_private_secret_and_a_client_reads_it(tmp_path):
    path = tmp_path / "run.secret"
    value = run_secret.for_server(path, None, print)
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    assert run_secret.for_client(path, None) == value and len(value) >= run_secret.MIN_CHARS


def test_a_secret_file_others_can_read_is_refused(tmp_path):
    path = tmp_path / "run.secret"
    path.write_text(SECRET)
    os.chmod(path, 0o644)
    with pytest.raises(UserError, match=r"others may read or write it \(mode 0644\)") as info:
        run_secret.read_trusted(path)
    assert "chmod 600" in str(info.value)


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a file to another user needs root")
def test_a_secret_file_of_another_user_is_refused(tmp_path):
    path = tmp_path / "run.secret"
    path.write_text(SECRET)
    os.chmod(path, 0o600)
    os.chown(path, 65534, 65534)  # nobody: as if planted by another user in a shared directory
    with pytest.raises(UserError, match="belongs to uid 65534, not to you"):
        run_secret.read_trusted(path)


def test_a_secret_file_that_is_a_link_is_refused(tmp_path):
    own = tmp_path / "my_private_key"
    own.write_text(SECRET)
    os.chmod(own, 0o600)
    link = tmp_path / "run.secret"
    link.symlink_to(own)
    with pytest.raises(UserError, match="as a regular file"):
        run_secret.read_trusted(link)


@pytest.mark.parametrize("content", [b"", b"short", b"\xff\xfe" * 20, b"x" * 5000])
def test_a_secret_file_without_a_usable_secret_is_refused(tmp_path, content):
    path = tmp_path / "run.secret"
    path.write_bytes(content)
    os.chmod(path, 0o600)
    with pytest.raises(UserError, match="does not hold a usable secret"):
        run_secret.read_trusted(path)


def test_the_environment_wins_and_must_be_long_enough(tmp_path, monkeypatch):
    monkeypatch.setenv(run_secret.ENV_VAR, "b" * 40)
    assert run_secret.for_server(tmp_path / "x", None, print) == "b" * 40
    assert not (tmp_path / "x").exists()
    assert run_secret.for_client(tmp_path / "x", None) == "b" * 40
    monkeypatch.setenv(run_secret.ENV_VAR, "short")
    with pytest.raises(UserError, match="at least 16"):
        run_secret.for_client(tmp_path / "x", None)


def test_a_configured_secret_file_is_created_once_then_reused(tmp_path):
    configured = tmp_path / "private" / "flamby.secret"
    configured.parent.mkdir(mode=0o700)
    said = []
    first = run_secret.for_server(tmp_path / "per-run", str(configured), said.append)
    assert said and str(configured) in said[0]
    assert run_secret.for_server(tmp_path / "per-run", str(configured), said.append) == first
    assert run_secret.for_client(tmp_path / "per-run", str(configured)) == first
    assert not (tmp_path / "per-run").exists()


# --- proofs and messages -------------------------------------------------------------------------

def _hello(**changes):
    document = handshake.make_hello(SECRET, "n" * 32, "port-1", 2, "f" * 16, "t" * 32, "host", 42)
    document.update(changes)
    return document


def test_a_hello_proves_the_secret_only_for_its_challenge_and_port():
    hello = handshake.read_hello(_hello())
    assert handshake.hello_is_proven(hello, SECRET, "n" * 32, "port-1")
    assert not handshake.hello_is_proven(hello, "b" * 32, "n" * 32, "port-1")   # another secret
    assert not handshake.hello_is_proven(hello, SECRET, "m" * 32, "port-1")     # replayed to a new challenge
    assert not handshake.hello_is_proven(hello, SECRET, "n" * 32, "port-2")     # relayed from another port
    for field, value in (("rank", 3), ("fingerprint", "g" * 16), ("turn", "u" * 32), ("host", "h2"),
                         ("pid", 43)):
        tampered = handshake.read_hello(_hello(**{field: value}))
        assert not handshake.hello_is_proven(tampered, SECRET, "n" * 32, "port-1"), field


def test_the_secret_is_in_no_message():
    hello = json.dumps(_hello())
    verdict = json.dumps(handshake.make_verdict(SECRET, handshake.read_hello(_hello()), "n" * 32, "p", None, 1.0))
    for text in (hello, verdict, json.dumps(handshake.challenge())):
        assert SECRET not in text


def test_a_forged_verdict_is_not_believed():
    hello = handshake.read_hello(_hello())
    real = handshake.make_verdict(SECRET, hello, "n" * 32, "port-1", None, 123.0)
    assert handshake.read_verdict(dict(real), SECRET, hello.nonce, "n" * 32, "port-1").ok
    for forged in ({**real, "proof": "0" * 64}, {**real, "ok": False}, {**real, "remaining_s": 999.0},
                   {**real, "reason": "go away"}):
        with pytest.raises(handshake.HandshakeError, match="did not prove"):
            handshake.read_verdict(forged, SECRET, hello.nonce, "n" * 32, "port-1")


def _random_value(rng):
    return rng.choice([None, True, -1, 2 ** 40, 1.5, "", "x" * 300, [], {}, [1, 2], {"a": 1}, "ok"])


def test_generated_malformed_hellos_are_refused_without_an_exception_of_another_kind():
    rng = random.Random(0)
    original = _hello()
    fields = ["protocol", "rank", "fingerprint", "turn", "host", "pid", "nonce", "proof"]
    for _ in range(500):
        document = dict(original)
        for field in rng.sample(fields[1:], rng.randint(1, 3)):
            if rng.random() < 0.3:
                document.pop(field)
            else:
                document[field] = _random_value(rng)
        try:
            hello = handshake.read_hello(document)
        except handshake.HandshakeError:
            continue
        # Well typed but altered: then its proof fails.
        assert not handshake.hello_is_proven(hello, SECRET, "n" * 32, "port-1") or \
            hello == handshake.read_hello(original)


class _FakeInter:
    """Just enough of an MPI intercommunicator to feed handshake.receive bytes."""

    def __init__(self, MPI, data):
        self.MPI, self.data = MPI, data

    def Iprobe(self, source, tag):
        return self.data is not None

    def Recv(self, buf, source, tag, status):
        buffer = buf[0]
        if len(self.data) > len(buffer):
            raise _Truncated()
        buffer[:len(self.data)] = self.data
        status.count = len(self.data)


class _Truncated(Exception):
    def Get_error_class(self):
        return _FakeMPI.ERR_TRUNCATE


class _Status:
    count = 0

    def Get_count(self, _):
        return self.count


class _FakeMPI:
    BYTE, ANY_TAG, ERR_TRUNCATE = "byte", -1, 14
    Exception = _Truncated
    Status = _Status


@pytest.mark.parametrize("data, why", [
    (b"\x80\x04\x95" + os.urandom(60), "not a JSON handshake message"),   # a pickle
    (os.urandom(2000), "not a JSON handshake message"),
    (b"[1, 2, 3]", "not this program's handshake message"),
    (b'{"protocol": "other/1"}', "not this program's handshake message"),
    (b"x" * (handshake.MAX_MESSAGE_BYTES + 1), "over 4096 bytes"),
    (b"", "not a JSON handshake message"),
])
def test_a_bad_message_is_refused_by_what_it_is(data, why):
    with pytest.raises(handshake.HandshakeError, match=why):
        handshake.receive(_FakeMPI, _FakeInter(_FakeMPI, data))


def test_a_silent_peer_is_given_up_on():
    start = time.monotonic()
    with pytest.raises(handshake.HandshakeError, match="sent nothing within 0.2 s"):
        handshake.receive(_FakeMPI, _FakeInter(_FakeMPI, None), timeout_s=0.2)
    assert time.monotonic() - start < 5


# --- files ---------------------------------------------------------------------------------------

def test_rendezvous_directory_and_published_file_are_private(tmp_path):
    files = rendezvous.RendezvousFiles(tmp_path / "rdv", "r1")
    publication = rendezvous.publish(files, "port-1", None, print)
    try:
        assert oct(files.directory.stat().st_mode & 0o777) == "0o700"
        assert oct(files.info.stat().st_mode & 0o777) == "0o600"
        assert oct(files.secret.stat().st_mode & 0o777) == "0o600"
        assert files.read_info()["port"] == "port-1"
    finally:
        publication.close()
    assert not files.info.exists() and not files.secret.exists()


def test_a_shared_rendezvous_directory_is_used_with_a_warning(tmp_path, caplog):
    shared = tmp_path / "scratch"
    shared.mkdir()
    os.chmod(shared, 0o777)
    rendezvous.prepare_directory(shared)
    assert "writable by other users" in caplog.text


@pytest.mark.parametrize("content", [b"", b"not json", b"[]", b'{"port": 1}', b"\xff" * 10,
                                     json.dumps({"run_id": "r1", "port": "p", "host": "h", "pid": "1",
                                                 "beat": 1}).encode(),
                                     json.dumps({"run_id": "r1", "port": "p", "host": "h", "pid": 1,
                                                 "heartbeat": 1.0}).encode(),  # the earlier wall-clock format
                                     b"{" * 20000, b'{"run_id": ' + b"[" * 100 + b"]" * 100 + b"}"])
def test_a_published_file_that_a_server_did_not_write_is_not_a_server(tmp_path, content):
    files = rendezvous.RendezvousFiles(tmp_path, "r1")
    files.info.write_bytes(content)
    assert files.read_info() is None and files.look() == (True, None)


def test_a_turn_not_written_by_a_client_of_this_run_is_replaced(tmp_path):
    files = rendezvous.RendezvousFiles(tmp_path, "r1")
    files.turn.write_text(json.dumps({"nonce": "x", "proof": "0" * 64}))
    with rendezvous.connect_turn(files, SECRET, "port-1", time.monotonic() + 5) as nonce:
        assert rendezvous.read_turn(files, SECRET, "port-1")[0] == nonce
        assert SECRET not in files.turn.read_text()
        # Held by a client of this run: another client waits behind it until its deadline.
        with pytest.raises(UserError, match="could not get a turn"):
            with rendezvous.connect_turn(files, SECRET, "port-1", time.monotonic() + 0.3):
                pass
    assert not files.turn.exists()


@pytest.mark.parametrize("run_id", ["../x", "a/b", "..", ".", ".hidden", "a\\b", "tab\there", "x" * 201, ""])
def test_run_ids_that_could_escape_a_directory_are_config_errors(run_id):
    with pytest.raises(ConfigError, match="cannot name files"):
        build_config({"common_args": {"run_id": run_id}})


@pytest.mark.parametrize("run_id", ["heart_fedavg_1", "2026-11-28.run", "001", "a.b-c_d"])
def test_ordinary_run_ids_are_fine(run_id):
    assert build_config({"common_args": {"run_id": run_id}}).common_args.run_id == run_id
