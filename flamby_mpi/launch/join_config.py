"""What separately started ranks must agree on before they join: the resolved config, key by key.

A client's hello (handshake.py) carries one short digest per key of its resolved config, in the
order of the keys' names, so that a server refusing it names the keys that differ instead of
saying only that the configuration does. The digests are compared, never parsed: a claimed
fingerprint of another length (another flamby-mpi version, another set of keys) is refused
without names. Keys a rank sets for itself are left out: its own log level, its own waits, and
where the rendezvous files are on its host (a shared file system may be mounted elsewhere).
"""
from __future__ import annotations

import hashlib
import json
from typing import List, Optional, Sequence, Tuple

import yaml

PER_RANK_KEYS = frozenset({"tracking_args.log_level", "comm_args.round_timeout_s", "comm_args.join_timeout_s",
                           "comm_args.rendezvous_dir", "comm_args.secret_file"})
DIGEST_HEX = 8  # per key: 32 bits; 56 keys make a hello of about 450 more bytes
MAX_SHOWN = 6
SAME_EVERYWHERE = "the same --cf and --set on every rank"


def agreed_items(config_yaml: str) -> List[Tuple[str, str]]:
    """(section.key, its value as canonical JSON) for every key the ranks must agree on, by name."""
    items = []
    for section, values in sorted(yaml.safe_load(config_yaml).items()):
        for key, value in sorted(values.items()):
            name = f"{section}.{key}"
            if name not in PER_RANK_KEYS:
                items.append((name, json.dumps(value, sort_keys=True, default=str)))
    return items


def fingerprint(config_yaml: str) -> str:
    return fingerprint_and_names(config_yaml)[0]


def key_names(config_yaml: str) -> Tuple[str, ...]:
    return fingerprint_and_names(config_yaml)[1]


def fingerprint_and_names(config_yaml: str) -> Tuple[str, Tuple[str, ...]]:
    """The fingerprint and the names of its keys, in its order, from one reading of the config."""
    items = agreed_items(config_yaml)
    digests = "".join(hashlib.sha256(f"{name}={value}".encode()).hexdigest()[:DIGEST_HEX] for name, value in items)
    return digests, tuple(name for name, _ in items)


def differing_keys(names: Sequence[str], own: str, claimed: str) -> Optional[List[str]]:
    """The keys whose digests differ, or None when the claimed fingerprint is not one of ours."""
    if len(own) != DIGEST_HEX * len(names) or len(claimed) != len(own):
        return None
    return [name for i, name in enumerate(names)
            if claimed[i * DIGEST_HEX:(i + 1) * DIGEST_HEX] != own[i * DIGEST_HEX:(i + 1) * DIGEST_HEX]]


def refusal(names: Sequence[str], own: str, claimed: str) -> str:
    """The reason a client whose fingerprint differs is refused (sent to it in the verdict)."""
    keys = differing_keys(names, own, claimed)
    if not keys:
        return f"its configuration differs from the server's (another flamby-mpi version? {SAME_EVERYWHERE})"
    shown = ", ".join(keys[:MAX_SHOWN]) + (f" and {len(keys) - MAX_SHOWN} more" if len(keys) > MAX_SHOWN else "")
    return f"its configuration differs from the server's in {shown} ({SAME_EVERYWHERE})"
