"""Hostile processes for the join tests, run as `mpiexec -n 1 python -m support.attacker MODE ...`.

client modes (argv: MODE RENDEZVOUS_DIR RUN_ID [ARG]): connect to the published port of a
separately started server and send, instead of a proper hello:
  pickle   a pickle whose unpickling would create the file ARG (after planting a turn file)
  random   random bytes
  oversized  1 MB of JSON
  replay   ARG, a hello recorded for another challenge (proven under the real secret)
  wrong-secret  the real client code with a secret of its own
server mode (argv: fake-server RENDEZVOUS_DIR RUN_ID RECORD_FILE): publishes a port of its own as
the run's server, records what a connecting client sends, and answers with a forged verdict.
Each prints one line saying what happened to it and exits 0 once it was refused.
"""
import json
import os
import pickle
import socket
import sys
import threading
import time
from pathlib import Path

from mpi4py import MPI

from flamby_mpi.exit.errors import UserError
from flamby_mpi.launch import handshake, rendezvous


class CreatesAFile:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):  # runs in whoever unpickles this
        return (open, (self.path, "w"))


def _published_port(files):
    try:
        return rendezvous.wait_for_server(files, time.monotonic() + 60)["port"]
    except UserError:
        raise SystemExit("no server published") from None


# How long an attacker waits for the server's verdict. A malformed hello gets none: the server
# logs its refusal and waits in the (collective) Disconnect until the attacker gives up and
# disconnects in turn, so every second here is a second the test waits. The test counts the
# server's refusals from its log, not from what the attackers print.
VERDICT_WAIT_S = 5


def _refused(inter) -> str:
    """What the server did after our message: a (refusing) verdict, or nothing."""
    try:
        document = handshake.receive(MPI, inter, timeout_s=VERDICT_WAIT_S)
        if "ok" not in document:  # the challenge, which the pickle attack did not wait for
            document = handshake.receive(MPI, inter, timeout_s=VERDICT_WAIT_S)
        return json.dumps(document)
    except handshake.HandshakeError as exc:
        return f"no verdict: {exc}"


def attack_as_client(mode, files, arg):
    port = _published_port(files)
    if mode == "wrong-secret":  # the real client's code, turn included, with a secret of its own
        wrong = "not-the-secret-of-this-run"
        try:
            rendezvous.client_join(MPI, port, wrong, 1, "x",
                                   turn=rendezvous.connect_turn(files, wrong, port, time.monotonic() + 60))
        except UserError as exc:
            print("REFUSED", str(exc).splitlines()[0], flush=True)
            return
        raise SystemExit("JOINED: the server accepted a wrong secret")
    # As in the report: a turn file of our own making, then a connection.
    files.turn.write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "mode": mode}))
    print("CONNECTING", flush=True)
    inter = MPI.COMM_SELF.Connect(port)
    inter.Set_errhandler(MPI.ERRORS_RETURN)
    if mode != "pickle":  # the reported attack sends its pickle without waiting for anything
        handshake.receive(MPI, inter)  # the server's challenge
    if mode == "pickle":
        payload = pickle.dumps(CreatesAFile(arg))
    elif mode == "random":
        payload = os.urandom(3000)
    elif mode == "oversized":
        payload = json.dumps({"protocol": handshake.PROTOCOL, "pad": "x" * 1_000_000}).encode()
    elif mode == "replay":
        payload = Path(arg).read_bytes()
    else:
        raise SystemExit(f"unknown mode {mode}")
    inter.Send([payload, MPI.BYTE], dest=0, tag=handshake.TAG)
    print("REFUSED", _refused(inter), flush=True)
    inter.Disconnect()


def fake_server(files, record_file):
    port = MPI.Open_port()
    files.directory.mkdir(parents=True, exist_ok=True)

    def beat():  # looks alive, as a real server does: its counter keeps changing
        count = 0
        while True:
            rendezvous.write_private(files.info, json.dumps(
                {"run_id": files.run_id, "port": port, "host": socket.gethostname(), "pid": os.getpid(),
                 "beat": count}))
            count += 1
            time.sleep(0.5)

    threading.Thread(target=beat, daemon=True).start()
    print("PUBLISHED", flush=True)
    inter = MPI.COMM_SELF.Accept(port)
    inter.Set_errhandler(MPI.ERRORS_RETURN)
    handshake.send(MPI, inter, handshake.challenge())
    buffer = bytearray(handshake.MAX_MESSAGE_BYTES)
    status = MPI.Status()
    inter.Recv([buffer, MPI.BYTE], source=0, tag=MPI.ANY_TAG, status=status)
    received = bytes(buffer[:status.Get_count(MPI.BYTE)])
    Path(record_file).write_bytes(received)
    # A verdict that says yes, with a proof made up without the secret.
    handshake.send(MPI, inter, {"protocol": handshake.PROTOCOL, "ok": True, "reason": None,
                                "remaining_s": 60.0, "proof": "0" * 64})
    # Disconnect is collective: it returns once the client has received the verdict, judged it
    # and disconnected in turn, so no sleep is needed to leave the client that time.
    inter.Disconnect()
    print("FAKE SERVER DONE", flush=True)
    files.remove(files.info)


def main():
    mode, directory, run_id = sys.argv[1:4]
    arg = sys.argv[4] if len(sys.argv) > 4 else None
    files = rendezvous.RendezvousFiles(Path(directory), run_id)
    if mode == "fake-server":
        fake_server(files, arg)
    else:
        attack_as_client(mode, files, arg)


if __name__ == "__main__":
    main()
