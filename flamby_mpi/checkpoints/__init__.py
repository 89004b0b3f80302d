"""The checkpoint cut "r rounds complete": each rank's files and the manifest rank 0 writes last,
checked (size, sha256, shape) before anything is read (`checkpoint`), and `--resume`: the ranks
agree on the newest cut intact on every rank, the plan says whether the config changes the
result, the roles are restored (`resume`). May import `outputs`, `runtime`, `storage`, `exit`,
`config`, `registry`; it is handed the plan and the roles, and never reads the config.
"""
