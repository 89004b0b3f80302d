"""The join handshake of separately started ranks: bounded JSON bytes and HMAC proofs, never pickle.

Until a peer has proven that it holds the run's secret, nothing it sends is
deserialised beyond one small JSON document: every handshake message is
received with `Recv` into a fixed buffer of `MAX_MESSAGE_BYTES` (MPI refuses a
longer message with a truncation error), within a deadline, then parsed as JSON
and checked field by field. The secret itself never crosses the network; each
side proves it holds the secret with an HMAC over fresh nonces:

  server -> client   challenge  {"protocol", "nonce": Ns}
  client -> server   hello      {"protocol", "rank", "fingerprint", "turn", "host", "pid", "nonce": Nc,
                                 "proof": HMAC(secret, "client", Ns, Nc, port, rank, fingerprint, turn, host, pid)}
  server -> client   verdict    {"ok", "reason", "remaining_s",
                                 "proof": HMAC(secret, "server", Nc, Ns, port, ok, reason, remaining_s)}

`remaining_s` is what is left of the server's join deadline, in seconds: the client
times it on its own clock (no wall-clock time crosses hosts, whose clocks may differ).

The port name the client connected to is part of both proofs, so a process that
relays a real client's answers to the real server from another port (a fake
server published in a shared rendezvous directory) gets nothing the server accepts.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass
from typing import Any, Dict, Optional

PROTOCOL = "flamby-mpi-join/2"
# Far above any real handshake message (a few hundred bytes), far below anything that costs memory.
MAX_MESSAGE_BYTES = 4096
TAG = 0x4A4E  # "JN"; any tag is read, this is the one we send with
# How long one side waits for the other's next handshake message.
MESSAGE_TIMEOUT_S = 30.0
_POLL_S = 0.005
_NONCE_BYTES = 16


class HandshakeError(Exception):
    """The peer's message was missing, too long, malformed, or did not prove the secret."""


def new_nonce() -> str:
    return secrets.token_hex(_NONCE_BYTES)


def proof(secret: str, *fields: Any) -> str:
    """HMAC-SHA256 under the secret of an unambiguous (JSON) encoding of the fields."""
    message = json.dumps(list(fields), separators=(",", ":"), sort_keys=True).encode()
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def proof_matches(secret: str, claimed: Any, *fields: Any) -> bool:
    return isinstance(claimed, str) and hmac.compare_digest(claimed, proof(secret, *fields))


# --- raw transport ----------------------------------------------------------------------------

def send(MPI, inter, document: Dict[str, Any]):
    data = json.dumps(document, separators=(",", ":")).encode()
    if len(data) > MAX_MESSAGE_BYTES:  # a bug on our side, never the peer's input
        raise ValueError(f"handshake message of {len(data)} bytes exceeds {MAX_MESSAGE_BYTES}")
    inter.Send([data, MPI.BYTE], dest=0, tag=TAG)


def receive(MPI, inter, timeout_s: float = MESSAGE_TIMEOUT_S) -> Dict[str, Any]:
    """One JSON object from the remote rank 0 of `inter`, read as at most MAX_MESSAGE_BYTES raw bytes."""
    end = time.monotonic() + timeout_s
    while not inter.Iprobe(source=0, tag=MPI.ANY_TAG):
        if time.monotonic() > end:
            raise HandshakeError(f"sent nothing within {timeout_s:g} s")
        time.sleep(_POLL_S)
    buffer = bytearray(MAX_MESSAGE_BYTES)
    status = MPI.Status()
    try:
        inter.Recv([buffer, MPI.BYTE], source=0, tag=MPI.ANY_TAG, status=status)
    except MPI.Exception as exc:
        if exc.Get_error_class() == MPI.ERR_TRUNCATE:
            raise HandshakeError(f"sent a message over {MAX_MESSAGE_BYTES} bytes") from None
        raise HandshakeError(f"its message could not be received ({exc.Get_error_string()})") from None
    data = bytes(buffer[:status.Get_count(MPI.BYTE)])
    try:
        document = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise HandshakeError(f"sent {len(data)} bytes that are not a JSON handshake message") from None
    if not isinstance(document, dict) or document.get("protocol") != PROTOCOL:
        raise HandshakeError("sent JSON that is not this program's handshake message")
    return document


# --- messages -----------------------------------------------------------------------------------

def _field(document: Dict[str, Any], name: str, kind, limit: int = 256):
    value = document.get(name)
    if kind is int:
        ok = isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2 ** 31
    elif kind is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    elif kind is bool:
        ok = isinstance(value, bool)
    else:
        ok = isinstance(value, str) and len(value) <= limit
    if not ok:
        raise HandshakeError(f"sent a malformed handshake message (field {name!r})")
    return value


def challenge() -> Dict[str, Any]:
    return {"protocol": PROTOCOL, "nonce": new_nonce()}


def read_challenge(document: Dict[str, Any]) -> str:
    return _field(document, "nonce", str, 64)


@dataclass(frozen=True)
class Hello:
    """A client's claims: none is trusted before `hello_is_proven`."""
    rank: int
    fingerprint: str
    turn: str
    host: str
    pid: int
    nonce: str
    proof: str

    def describe(self) -> str:
        return f"{self.host!r} (pid {self.pid})"


def make_hello(secret: str, server_nonce: str, port: str, rank: int, fingerprint: str, turn: str,
               host: str, pid: int) -> Dict[str, Any]:
    nonce = new_nonce()
    return {"protocol": PROTOCOL, "rank": rank, "fingerprint": fingerprint, "turn": turn, "host": host,
            "pid": pid, "nonce": nonce,
            "proof": proof(secret, "client", server_nonce, nonce, port, rank, fingerprint, turn, host, pid)}


def read_hello(document: Dict[str, Any]) -> Hello:
    return Hello(rank=_field(document, "rank", int), fingerprint=_field(document, "fingerprint", str, 2048),
                 turn=_field(document, "turn", str, 64), host=_field(document, "host", str),
                 pid=_field(document, "pid", int), nonce=_field(document, "nonce", str, 64),
                 proof=_field(document, "proof", str, 64))


def hello_is_proven(hello: Hello, secret: str, server_nonce: str, port: str) -> bool:
    return proof_matches(secret, hello.proof, "client", server_nonce, hello.nonce, port, hello.rank,
                         hello.fingerprint, hello.turn, hello.host, hello.pid)


def make_verdict(secret: str, hello: Optional[Hello], server_nonce: str, port: str,
                 reason: Optional[str], remaining_s: float) -> Dict[str, Any]:
    ok = reason is None
    client_nonce = hello.nonce if hello is not None else ""
    return {"protocol": PROTOCOL, "ok": ok, "reason": reason, "remaining_s": remaining_s,
            "proof": proof(secret, "server", client_nonce, server_nonce, port, ok, reason, remaining_s)}


@dataclass(frozen=True)
class Verdict:
    ok: bool
    reason: Optional[str]
    remaining_s: float  # of the server's join deadline, when it answered


def read_verdict(document: Dict[str, Any], secret: str, client_nonce: str, server_nonce: str,
                 port: str) -> Verdict:
    """The server's answer, only if it proves that the server holds the secret."""
    ok = _field(document, "ok", bool)
    reason = document.get("reason")
    if reason is not None:
        reason = _field(document, "reason", str, 1024)
    remaining_s = _field(document, "remaining_s", float)
    if not proof_matches(secret, document.get("proof"), "server", client_nonce, server_nonce, port, ok,
                         reason, remaining_s):
        raise HandshakeError("did not prove that it holds this run's secret")
    if not 0 <= remaining_s <= 10 ** 9:  # proven, so the server's own value: bounded all the same
        raise HandshakeError("sent a malformed handshake message (field 'remaining_s')")
    return Verdict(ok=ok, reason=reason, remaining_s=float(remaining_s))
