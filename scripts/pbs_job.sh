#!/bin/bash
# flamby-mpi as one PBS Pro / Torque job: N+1 MPI ranks in one allocation
# (rank 0 = server, ranks 1..N = clients of centres 0..N-1).
#
# NOT TESTED ON A REAL PBS: tests/test_cluster_scripts.py checks its syntax and
# header, and runs it under a PBS-like environment (PBS_NODEFILE...) without PBS.
#
# Submit from the project directory (relative config paths are read from there).
# qsub passes no arguments to a job script, so they travel in FLAMBY_MPI_ARGS
# (split on spaces, and by qsub -v on commas: no spaces or commas inside values;
# a list such as data_args.centers goes in the config file):
#   PBS Pro: qsub -l select=1:ncpus=<N+1>:mpiprocs=<N+1> \
#                 -v FLAMBY_MPI_ARGS="CONFIG --set section.key=value" scripts/pbs_job.sh
#   Torque:  qsub -l nodes=1:ppn=<N+1> -F "CONFIG --set section.key=value" scripts/pbs_job.sh
#   python scripts/submit.py --scheduler pbs CONFIG [--set ...]   # computes N+1 from the config
# Options given to qsub override the #PBS lines below.
#
# Rerunnable jobs (qsub -r y; submit.py --requeue): a job PBS starts again resumes from its
# newest checkpoint in the same output directory (see "Rerun" below; untested on a real PBS).
#
# Outputs: runs/pbs-<job id>/ (results.json, logs/rank<k>.log, ...); the console in
# flamby-mpi.o<job id> in the submit directory.
#
# The ranks are started with the MPI's own mpiexec, which reads the allocation:
# MPICH's Hydra from $PBS_NODEFILE (then starts remote ranks with ssh), Open MPI
# through PBS's TM interface when built with it (else give --hostfile $PBS_NODEFILE
# in FLAMBY_MPI_MPIEXEC_ARGS).
# Other variables (all optional): FLAMBY_MPI_PYTHON (the project's python; default
# $VIRTUAL_ENV/bin/python, else python3), FLAMBY_MPI_HOME (the directory holding
# launch_client.py), FLAMBY_MPI_MPIEXEC, FLAMBY_MPI_MPIEXEC_ARGS,
# FLAMBY_MPI_NP (ranks; default: lines of $PBS_NODEFILE), FLAMBY_MPI_OUTPUT_ROOT (default runs).
#
#PBS -N flamby-mpi
# Ranks = centres + 1: 5 fits config/fedml_config.yaml (4 synthetic centres).
#PBS -l select=1:ncpus=5:mpiprocs=5:mem=10gb
# Torque instead of the select line above:
##PBS -l nodes=1:ppn=5,mem=10gb
#PBS -l walltime=01:00:00
#PBS -j oe
# Keep the submitter's environment (the activated virtual environment):
#PBS -V
#
# GPUs (optional; also set device_args.using_gpu: true), PBS Pro:
##PBS -l select=1:ncpus=5:mpiprocs=5:ngpus=4:mem=10gb
#
# Site-specific lines go here:
##PBS -q <queue>
##PBS -A <account>
set -euo pipefail

# Site-specific environment goes here, for example:
#   module load mpich/4.2              # or openmpi/5.0; mpi4py must be built against it (docs/clusters.md)
#   source /path/to/flamby-mpi/.venv/bin/activate

if [ $# -eq 0 ] && [ -n "${FLAMBY_MPI_ARGS:-}" ]; then
    # shellcheck disable=SC2086  # word splitting is the documented format
    set -- $FLAMBY_MPI_ARGS
fi
if [ $# -lt 1 ] || [ "${1#-}" != "$1" ]; then
    echo "usage: qsub -v FLAMBY_MPI_ARGS=\"CONFIG [--set section.key=value ...]\" $0" >&2
    exit 2
fi
config=$1
shift
: "${PBS_JOBID:?not inside a PBS job: submit with qsub}"
cd "${PBS_O_WORKDIR:-$PWD}"

if [ -n "${FLAMBY_MPI_NP:-}" ]; then
    np=$FLAMBY_MPI_NP
elif [ -n "${PBS_NODEFILE:-}" ] && [ -r "$PBS_NODEFILE" ]; then
    np=$(grep -c . "$PBS_NODEFILE")
else
    echo "flamby-mpi: cannot tell how many ranks to start: no PBS_NODEFILE; set FLAMBY_MPI_NP" >&2
    exit 2
fi

# Finding python and the project is also done in slurm_job.sh, on purpose: schedulers run a
# copy of the job script from their spool directory, so it cannot source a shared helper.
python=${FLAMBY_MPI_PYTHON:-}
if [ -z "$python" ]; then
    if [ -n "${VIRTUAL_ENV:-}" ] && [ -x "$VIRTUAL_ENV/bin/python" ]; then
        python=$VIRTUAL_ENV/bin/python
    else
        python=$(command -v python3 || command -v python || true)
    fi
fi
if [ -z "$python" ] || ! "$python" -c "import flamby_mpi" 2>/dev/null; then
    echo "flamby-mpi: cannot find a python with flamby_mpi installed (tried '${python}');" \
         "set FLAMBY_MPI_PYTHON or submit with the project's virtual environment active (qsub -V)" >&2
    exit 2
fi

home=${FLAMBY_MPI_HOME:-}
if [ -z "$home" ]; then
    home=$("$python" -c "import os, flamby_mpi; print(os.path.dirname(os.path.dirname(os.path.abspath(flamby_mpi.__file__))))")
    [ -f "$home/launch_client.py" ] || home=$PWD
fi
if [ ! -f "$home/launch_client.py" ]; then
    echo "flamby-mpi: no launch_client.py in $home: set FLAMBY_MPI_HOME to the project directory" >&2
    exit 2
fi

run_id=pbs-${PBS_JOBID%%.*}
output_dir=${FLAMBY_MPI_OUTPUT_ROOT:-runs}/$run_id
mpiexec=${FLAMBY_MPI_MPIEXEC:-$(dirname "$python")/mpiexec}
[ -x "$mpiexec" ] || mpiexec=mpiexec
# shellcheck disable=SC2206  # extra flags are meant to be split
start=("$mpiexec" ${FLAMBY_MPI_MPIEXEC_ARGS:-} -n "$np")
# Ours first: the user's own --set, later on the line, win.
defaults=(--run_id "$run_id" --set "common_args.output_dir=$output_dir")

# Rerun (qsub -r y, docs/checkpoints.md, "On a cluster: SLURM requeue and PBS"). NOT TESTED ON A REAL PBS.
# PBS Pro / OpenPBS count a job's starts in its run_count attribute (qstat -f); when it is
# above 1 the job was rerun (qrerun, a preemption with requeue, a node failure) and continues
# its run from the newest complete checkpoint, starts it again over what it left if it stopped
# before any checkpoint (--overwrite), or does nothing again if the run had finished.
# Torque shows no run_count: there, give FLAMBY_MPI_RESUME=1 to resume.
runs=$(qstat -f "$PBS_JOBID" 2> /dev/null | sed -n 's/^ *run_count = *\([0-9][0-9]*\).*/\1/p' | head -n 1 || true)
again=()
if [ "${runs:-1}" -gt 1 ] || [ "${FLAMBY_MPI_RESUME:-0}" = 1 ]; then
    # A user's own --overwrite was for the first start: now the run in that directory is this
    # job's own, to finish, resume or start again as decided here.
    args=()
    for arg in "$@"; do [ "$arg" = --overwrite ] || args+=("$arg"); done
    set -- "${args[@]}"
    # The decision and the run directory (the job's command line's: a user's own --set
    # common_args.output_dir wins), from the rule both job scripts share (flamby_mpi/restart.py).
    # When it cannot decide (a command line or config the launcher would refuse), its reason goes
    # to the job's log and the job stops: starting afresh instead would leave behind the run it
    # may have checkpointed elsewhere (a --set common_args.output_dir it could not read).
    if ! decision=$(PYTHONPATH="$home${PYTHONPATH:+:$PYTHONPATH}" "$python" -m flamby_mpi.restart \
                    "$output_dir" "$config" "${defaults[@]}" "$@"); then
        echo "flamby-mpi: PBS job $PBS_JOBID started again (run ${runs:-?}), but what to do with its run" \
             "cannot be decided (above): stopping, without starting it afresh" >&2
        exit 2
    fi
    run_dir=${decision#* }
    case "${decision%% *}" in
        finished)
            echo "flamby-mpi: PBS job $PBS_JOBID started again (run ${runs:-?}), but its run had already" \
                 "finished: results in $run_dir/results.json; nothing to redo"
            exit 0
            ;;
        resume)
            again=(--resume)
            echo "flamby-mpi: PBS job $PBS_JOBID started again (run ${runs:-?}): resuming from the newest" \
                 "complete checkpoint in $run_dir/checkpoints"
            ;;
        overwrite)
            again=(--overwrite)
            echo "flamby-mpi: PBS job $PBS_JOBID started again (run ${runs:-?}) before any complete" \
                 "checkpoint in $run_dir: starting afresh over what the interrupted run left there" \
                 "(--overwrite)"
            ;;
        *)
            echo "flamby-mpi: PBS job $PBS_JOBID started again (run ${runs:-?}) before any complete" \
                 "checkpoint in $run_dir: starting afresh"
            ;;
    esac
fi

echo "flamby-mpi: PBS job $PBS_JOBID, $np ranks; outputs in $output_dir"
echo "flamby-mpi: ${start[*]} $python $home/launch_client.py --cf $config ${defaults[*]} $* ${again[*]}"

# qdel, qrerun and preemption send SIGTERM to the job's processes, then SIGKILL after the
# queue's kill_delay (set preemption_grace_s below it). The launcher runs in the background
# so that this shell passes TERM/INT on to it when only the shell is signalled; every rank
# stops at the next round boundary with a checkpoint and exits 128 + the signal.
signals=0
forward() {
    signals=$((signals + 1))
    kill -s "$1" "$launcher" 2> /dev/null || true
}
"${start[@]}" "$python" "$home/launch_client.py" --cf "$config" "${defaults[@]}" "$@" "${again[@]}" &
launcher=$!
trap 'forward TERM' TERM
trap 'forward INT' INT
while true; do
    signals_before=$signals
    status=0
    wait "$launcher" || status=$?
    # wait returns early when a trapped signal arrives; the launcher's own status comes later.
    [ "$signals" -ne "$signals_before" ] || break
done
exit "$status"
