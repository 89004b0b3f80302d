"""One rank's part of run_directory.claim in a process of its own, on a pretend host, for the
two-host tests of tests/test_unit_run_directory.py (a real second host needs network namespaces).

  python -m support.ownership_rank OUTPUT_DIR RANK HOST RANK0_HOST TOKEN [--resume|--overwrite]

Rank 0 takes the directory for real (its verdict then names RANK0_HOST and TOKEN, as the agree
of a real job would); another rank receives that verdict. Prints one JSON line {"code", "notes",
"pid"}, then keeps what it holds until its standard input closes.
"""
import json
import os
import sys
import time
from pathlib import Path

from flamby_mpi.storage import run_directory


class PretendTransport:
    """A job's collectives as one rank sees them: rank 0's verdict, and only this rank's problem."""

    def __init__(self, rank: int, host: str, verdict: dict):
        self.rank, self.host, self.verdict = rank, host, verdict

    def agree(self, value):
        return value if self.rank == 0 else self.verdict

    def allgather(self, value):
        return [value]


class Plan:
    def __init__(self, output_dir: str, resume: bool, overwrite: bool):
        self.output_dir, self.resume, self.overwrite, self.run_id = Path(output_dir), resume, overwrite, "r1"


def main(argv):
    output_dir, rank, host, rank0_host, token = argv[:5]
    flags = argv[5:]
    plan = Plan(output_dir, "--resume" in flags, "--overwrite" in flags)
    transport = PretendTransport(int(rank), host, {"host": rank0_host, "token": token, "notes": []})
    if int(rank) == 0:  # the job's own token, so that the other processes can be given it
        run_directory.new_token = lambda: token
    claim = run_directory.claim(plan, transport)
    print(json.dumps({"code": claim.code, "notes": claim.notes, "pid": os.getpid(), "time": time.time()}),
          flush=True)
    sys.stdin.read()  # hold the lock (if taken) until the test closes our stdin
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
