#!/usr/bin/env bash
# Start the server and N clients of one run as separate processes on this host,
# exactly as one would type them in N+1 terminals (no mpirun):
#   python launch_client.py --cf CONFIG --run_id RUN --rank K --role server|client
#
# usage: scripts/start_local.sh CONFIG [RUN_ID] [-- extra launch_client.py arguments, e.g. --set k=v]
#
# In tmux (when installed and FLAMBY_MPI_NO_TMUX is unset): one session named after the run,
# one pane per rank, attached when run from a terminal. Otherwise: background processes,
# one log per rank in runs/<RUN_ID>/terminals/rank<K>.log; the script waits for all of them
# and exits non-zero if any rank failed.
set -euo pipefail

usage() { sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
[ $# -ge 1 ] || usage
case "$1" in -h|--help) usage ;; esac
config=$1; shift
run_id=${1:-}
# The default id has a random suffix, as launch_client.py's: two runs started in the same second differ.
if [ -n "$run_id" ] && [ "$run_id" != "--" ]; then shift; else run_id="local-$(date +%Y%m%d-%H%M%S)-$(printf %04x "$RANDOM")"; fi
[ "${1:-}" = "--" ] && shift
extra=("$@")

here=$(cd "$(dirname "$0")/.." && pwd)
python=${FLAMBY_MPI_PYTHON:-python}
[ -f "$config" ] || { echo "start_local.sh: config not found: $config" >&2; exit 2; }

# Number of clients = number of centres of the config's dataset (asks the project itself; the
# whole run plan is checked, as each rank will, so a config problem is reported once, here).
clients=$("$python" - "$config" "${extra[@]}" <<'PY'
import sys
from flamby_mpi.exit.errors import UserError
from flamby_mpi.world_size import set_overrides, world_size_of
try:
    print(world_size_of(sys.argv[1], set_overrides(sys.argv[2:]), check_plan=True) - 1)
except UserError as error:
    sys.exit(f"start_local.sh: {error}")
PY
)
quoted_extra=$(printf ' %q' "${extra[@]}")
command_for() {  # rank role
  printf 'cd %q && %q %q --cf %q --run_id %q --rank %s --role %s%s' \
    "$PWD" "$python" "$here/launch_client.py" "$config" "$run_id" "$1" "$2" "${extra[*]:+$quoted_extra}"
}

echo "run $run_id: 1 server + $clients clients"
if command -v tmux >/dev/null 2>&1 && [ -z "${FLAMBY_MPI_NO_TMUX:-}" ]; then
  session="flamby-$run_id"
  tmux new-session -d -s "$session" -n ranks "$(command_for 0 server); read -r -p 'rank 0 done, press enter'"
  for k in $(seq 1 "$clients"); do
    tmux split-window -t "$session" "$(command_for "$k" client); read -r -p 'rank $k done, press enter'"
    tmux select-layout -t "$session" tiled >/dev/null
  done
  echo "tmux session $session (tmux attach -t $session)"
  [ -t 1 ] && exec tmux attach -t "$session"
  exit 0
fi

logs="runs/$run_id/terminals"
mkdir -p "$logs"
pids=()
for k in $(seq 0 "$clients"); do
  role=client; [ "$k" -eq 0 ] && role=server
  bash -c "$(command_for "$k" "$role" | sed 's/ && / \&\& exec /')" > "$logs/rank$k.log" 2>&1 &
  pids+=($!)
  echo "rank $k ($role): pid $!, log $logs/rank$k.log"
done
trap 'kill "${pids[@]}" 2>/dev/null' INT TERM
status=0
for k in "${!pids[@]}"; do
  if ! wait "${pids[$k]}"; then echo "rank $k failed (see $logs/rank$k.log)" >&2; status=1; fi
done
[ $status -eq 0 ] && echo "run $run_id finished: runs/$run_id/results.json"
exit $status
