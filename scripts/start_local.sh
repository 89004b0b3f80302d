#!/usr/bin/env bash
# Start the server and N clients of one run as separate processes on this host,
# exactly as one would type them in N+1 terminals (no mpirun):
#   python launch_client.py --cf CONFIG --run_id RUN --rank K --role server|client
#
# usage: scripts/start_local.sh CONFIG [RUN_ID] [-- extra launch_client.py arguments, e.g. --set k=v]
#
# In tmux (when installed and FLAMBY_MPI_NO_TMUX is unset): one session named after the run,
# one pane per rank, attached when run from a terminal. Otherwise: background processes,
# one log per rank in runs/<RUN_ID>/terminals/rank<K>.log; the script waits for all of them,
# exits non-zero if any rank failed, and else names the run's results.json (in runs/<RUN_ID>,
# or common_args.output_dir).
set -euo pipefail

# The comment block above, up to the first line that is not a comment.
usage() { sed -n '2,/^[^#]/s/^# \{0,1\}//p' "$0"; exit 2; }
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

# The run's plan, asked of the project itself and checked as each rank will check it, so that a
# problem is reported once, here, before anything is made: the run id (the launcher's rule; it
# names directories), then the whole config. It gives the number of clients (the centres of the
# config's dataset) and the output directory the ranks will write to, one per line.
plan=$("$python" - "$config" "$run_id" "${extra[@]}" <<'PY'
import sys
from flamby_mpi.config import load_config, parse_override, run_id_problem
from flamby_mpi.exit.errors import UserError
from flamby_mpi.world_size import set_overrides

config, run_id, overrides = sys.argv[1], sys.argv[2], set_overrides(sys.argv[3:])
try:
    problem = run_id_problem(run_id)
    if problem:
        raise UserError(f"RUN_ID: {problem}")
    for text in overrides:
        parse_override(text)  # a malformed --set is reported before the config file's problems
    from flamby_mpi.plan import make_plan  # imports torch: after the cheap checks

    plan = make_plan(load_config(config, overrides), run_id=run_id)
except UserError as error:
    print(f"start_local.sh: {error}", file=sys.stderr)
    sys.exit(2)
print(plan.world_size - 1)
print(plan.output_dir)
PY
)
clients=${plan%%$'\n'*}
output_dir=${plan#*$'\n'}
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
[ $status -eq 0 ] && echo "run $run_id finished: $output_dir/results.json"
exit $status
