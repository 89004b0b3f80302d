"""How many MPI processes a run needs (its centres + 1 server), from a config and --set flags: the
centres listed in data_args.centers, else all of the dataset's.

The scripts that start or submit jobs all ask here: scripts/submit.py (on a
cluster login node with only pyyaml), scripts/start_local.sh and
scripts/reproduce_flamby_benchmark.py. For FLamby's datasets and synthetic the
count comes from the config and flamby_mpi.registry alone, without torch.
"""
from __future__ import annotations

from typing import List, Sequence

from .config import RunConfig, load_config, parse_override
from .exit.errors import ConfigError
from .registry import (
    FLAMBY_DATASET_FACTS,
    canonical_flamby_name,
    centre_problems,
    client_count_problems,
    is_synthetic,
    listed_centres,
)


def set_overrides(launch_args: Sequence[str]) -> List[str]:
    """The --set values among launch_client.py's flags (both `--set x` and `--set=x`)."""
    found = []
    for i, arg in enumerate(launch_args):
        if arg == "--set" and i + 1 < len(launch_args):
            found.append(launch_args[i + 1])
        elif arg.startswith("--set="):
            found.append(arg[len("--set="):])
    return found


def world_size_for(config: RunConfig, *, check_plan: bool = False) -> int:
    """Centres + 1 for a loaded config; see world_size_of. Raises UserError (ConfigError for
    client counts that contradict the dataset)."""
    if not check_plan:
        flamby_name = canonical_flamby_name(config.data_args.dataset)
        if flamby_name is not None:
            name, centres = flamby_name, FLAMBY_DATASET_FACTS[flamby_name].centres
        elif is_synthetic(config.data_args.dataset):
            name, centres = "synthetic", config.data_args.synthetic_num_centers
        else:
            name = None
        if name is not None:
            problems = centre_problems(config.data_args.centers, name, centres) \
                + client_count_problems(config, name, centres)
            if problems:
                raise ConfigError(problems)
            return len(listed_centres(config.data_args.centers, centres)) + 1
    from .plan import make_plan  # imports torch and the dataset module

    return make_plan(config).world_size


def world_size_of(config_path: str, overrides: Sequence[str] = (), *, check_plan: bool = False) -> int:
    """Centres + 1 for this config file and these `section.key=value` overrides.

    FLamby's datasets (their centre counts are in flamby_mpi.registry, FLamby's
    NUM_CLIENTS written down) and synthetic (data_args.synthetic_num_centers) are
    counted without importing torch or FLamby; data_args.centers (checked against
    that count) picks some of them, and client_num_in_total / worker_num are
    checked against the number of client ranks. Any other dataset, a module of
    the user's, is asked itself: that builds the run plan, importing torch and
    the module.

    check_plan=True builds the plan for every dataset, as each rank will, so that
    whatever a rank would report (FLamby or a dataset's extra missing, a
    strategy's missing hyperparameter, a client count...) is reported once, now.

    Raises UserError: a malformed --set first, then the config's problems.
    """
    overrides = list(overrides)
    for text in overrides:
        parse_override(text)  # a malformed --set is reported before the config file's problems
    return world_size_for(load_config(config_path, overrides), check_plan=check_plan)
