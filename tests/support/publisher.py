"""Light rendezvous processes for the tests: the real publishing code, without MPI or training.

  python -m support.publisher race DIR RUN_ID START_AT STOP_FILE
      waits until time.time() >= START_AT (so that two of them call it at the same moment), then
      calls the real rendezvous.publish; prints `PUBLISHED <pid> <sha256 of the secret it made>` and
      keeps its heartbeat until STOP_FILE exists, then closes (exit 0). Refused, it prints the error
      as the launcher does and exits with its code (2).
  python -m support.publisher beat-only DIR RUN_ID
      a publication whose counter changes like a live server's, but no secret file beside it (as when
      the secret file disappeared); runs until killed.
"""
import hashlib
import json
import os
import socket
import sys
import time
from pathlib import Path

from flamby_mpi.exit.errors import UserError
from flamby_mpi.launch import rendezvous


def race(files, start_at: float, stop_file: Path):
    while time.time() < start_at:
        pass  # spin, not sleep: both contenders leave this loop within microseconds of each other
    print(f"CALLED {time.time():.6f}", flush=True)
    try:
        publication = rendezvous.publish(files, f"port-of-{os.getpid()}", None, lambda text: print(text, flush=True))
    except UserError as exc:
        print(f"flamby-mpi: error: {exc}", file=sys.stderr, flush=True)
        sys.exit(exc.exit_code)
    secret_sha = hashlib.sha256(publication.secret.encode()).hexdigest()
    print(f"PUBLISHED {os.getpid()} {secret_sha}", flush=True)
    end = time.monotonic() + 120
    while not stop_file.exists() and time.monotonic() < end:
        time.sleep(0.05)
    publication.close()


def beat_only(files):
    files.directory.mkdir(parents=True, exist_ok=True)
    count = 0
    print("PUBLISHED", flush=True)
    while True:
        rendezvous.write_private(files.info, json.dumps(
            {"run_id": files.run_id, "port": "tag#0$description#nowhere$port#1$", "host": socket.gethostname(),
             "pid": os.getpid(), "beat": count}))
        count += 1
        time.sleep(0.5)


def main():
    mode, directory, run_id = sys.argv[1:4]
    files = rendezvous.RendezvousFiles(Path(directory), run_id)
    if mode == "race":
        race(files, float(sys.argv[4]), Path(sys.argv[5]))
    elif mode == "beat-only":
        beat_only(files)
    else:
        raise SystemExit(f"unknown mode {mode}")


if __name__ == "__main__":
    main()
