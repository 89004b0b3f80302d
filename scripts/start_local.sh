#!/usr/bin/env bash
# Start the server and N clients of one run as separate processes on this host,
# exactly as one would type them in N+1 terminals (no mpirun):
#   python launch_client.py --cf CONFIG --run_id RUN --rank K --role server|client
#
# usage: scripts/start_local.sh CONFIG [RUN_ID] [-- extra launch_client.py arguments, e.g. --set k=v]
#
# Before anything starts, the run id, the config and the output directory are checked as the
# ranks will check them: an earlier run there without --resume or --overwrite is refused here.
# In tmux (when installed and FLAMBY_MPI_NO_TMUX is unset): one session named after the run,
# one pane per rank, attached when run from a terminal. Otherwise: background processes,
# one log per rank in <output directory>/terminals/rank<K>.log (appended to, but with
# --overwrite); the script waits for all of them, stops the clients still waiting 10 s after
# the server failed, exits non-zero if any rank failed, and else names the run's results.json
# (in runs/<RUN_ID>, or common_args.output_dir).
set -euo pipefail

# The comment block above, up to the first line that is not a comment.
usage() { sed -n '2,/^[^#]/s/^# \{0,1\}//p' "$0"; exit "${1:-2}"; }
[ $# -ge 1 ] || usage
case "$1" in -h|--help) usage 0 ;; esac
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
# names directories), then the whole config, then the output directory (an earlier run there
# without --resume or --overwrite: the server would refuse it while its clients waited for it).
# It gives the number of clients (the centres of the config's dataset), whether the run starts
# with --overwrite (as the ranks' own parser reads the arguments), and the output directory the
# ranks will write to, one per line.
plan=$("$python" - "$config" "$run_id" "${extra[@]}" <<'PY'
import sys
from flamby_mpi.cli import build_parser
from flamby_mpi.config import load_config, parse_override, run_id_problem
from flamby_mpi.exit.errors import UserError
from flamby_mpi.storage.run_directory import refusal_ahead
from flamby_mpi.world_size import set_overrides

config, run_id, overrides = sys.argv[1], sys.argv[2], set_overrides(sys.argv[3:])
try:
    problem = run_id_problem(run_id)
    if problem:
        raise UserError(f"RUN_ID: {problem}")
    for text in overrides:
        parse_override(text)  # a malformed --set is reported before the config file's problems
    from flamby_mpi.plan import make_plan  # imports torch: after the cheap checks

    plan = make_plan(load_config(config, overrides, given_as="CONFIG"), run_id=run_id)
    given, _ = build_parser().parse_known_args(["--cf", config, *sys.argv[3:]])
    refused = refusal_ahead(plan.output_dir, given.resume, given.overwrite)
    if refused:
        raise refused
except UserError as error:
    print(f"start_local.sh: {error}", file=sys.stderr)
    sys.exit(2)
print(plan.world_size - 1)
print("overwrite" if given.overwrite else "keep")
print(plan.output_dir)
PY
)
clients=${plan%%$'\n'*}
plan=${plan#*$'\n'}
earlier_logs=${plan%%$'\n'*}
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

# The logs are the run's: in its own output directory, kept across --resume (appended to).
logs="$output_dir/terminals"
mkdir -p "$logs"
declare -A rank_of  # pid -> rank, of the ranks still running
for k in $(seq 0 "$clients"); do
  role=client; [ "$k" -eq 0 ] && role=server
  log="$logs/rank$k.log"
  [ "$earlier_logs" = overwrite ] && : > "$log"
  echo "=== start_local.sh, run $run_id, rank $k ($role), $(date '+%Y-%m-%d %H:%M:%S')" >> "$log"
  bash -c "$(command_for "$k" "$role" | sed 's/ && / \&\& exec /')" >> "$log" 2>&1 &
  rank_of[$!]=$k
  echo "rank $k ($role): pid $!, log $log"
done
trap 'kill "${!rank_of[@]}" 2>/dev/null' INT TERM
# A client waits for its server up to comm_args.join_timeout_s: once the server has failed, those
# still running are stopped (10 s leave them the time to say what the server told them).
status=0
stop_at=
while [ ${#rank_of[@]} -gt 0 ]; do
  running=" $(jobs -rp | tr '\n' ' ') "
  for pid in "${!rank_of[@]}"; do
    case "$running" in *" $pid "*) continue ;; esac
    k=${rank_of[$pid]}
    unset "rank_of[$pid]"
    code=0
    wait "$pid" || code=$?
    [ "$code" -eq 0 ] && continue
    echo "rank $k failed with exit code $code (see $logs/rank$k.log)" >&2
    status=1
    if [ "$k" -eq 0 ] && [ ${#rank_of[@]} -gt 0 ]; then
      stop_at=$((SECONDS + 10))
      echo "start_local.sh: the server failed; clients still running in 10 s are stopped" >&2
    fi
  done
  if [ -n "$stop_at" ] && [ "$SECONDS" -ge "$stop_at" ] && [ ${#rank_of[@]} -gt 0 ]; then
    kill "${!rank_of[@]}" 2>/dev/null || true
    stop_at=
  fi
  [ ${#rank_of[@]} -gt 0 ] && sleep 0.5
done
[ $status -eq 0 ] && echo "run $run_id finished: $output_dir/results.json"
exit $status
