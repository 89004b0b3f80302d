"""The files of a run's directory, through one primitive (`safe_files`): atomic writes under
unpredictable names, directories entered without following links, bounded reads of regular files
only, full-disk errors named (exit 74), big checkpoint parts written past the page cache
(O_DIRECT, where the file system allows it); torch.save with or without its CRC-32s (`torch_files`);
and who owns a run directory (`run_directory`: the lock held for the job, what an earlier run
left there, `--overwrite`). May import `flamby_mpi.exit` and `flamby_mpi.registry` only: every
floor above writes its files through it.
"""
