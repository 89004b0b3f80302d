#!/bin/bash
# flamby-mpi as one PBS Pro / Torque job: N+1 MPI ranks in one allocation
# (rank 0 = server, ranks 1..N = clients of centres 0..N-1).
#
# NOT TESTED ON A REAL PBS: tests/test_cluster_scripts.py checks its syntax and
# header, and runs it under a PBS-like environment (PBS_NODEFILE...) without PBS.
#
# Submit from the project directory (relative config paths are read from there).
# qsub passes no arguments to a job script, so they travel in FLAMBY_MPI_ARGS
# (split on spaces: no spaces or commas inside values):
#   PBS Pro: qsub -l select=1:ncpus=<N+1>:mpiprocs=<N+1> \
#                 -v FLAMBY_MPI_ARGS="CONFIG --set section.key=value" scripts/pbs_job.sh
#   Torque:  qsub -l nodes=1:ppn=<N+1> -F "CONFIG --set section.key=value" scripts/pbs_job.sh
#   python scripts/submit.py --scheduler pbs CONFIG [--set ...]   # computes N+1 from the config
# Options given to qsub override the #PBS lines below.
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
#   module load mpich/4.2              # or openmpi/5.0; mpi4py must be built against it (README)
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

echo "flamby-mpi: PBS job $PBS_JOBID, $np ranks; outputs in $output_dir"
echo "flamby-mpi: ${start[*]} $python $home/launch_client.py --cf $config ${defaults[*]} $*"
exec "${start[@]}" "$python" "$home/launch_client.py" --cf "$config" "${defaults[@]}" "$@"
