"""What a run leaves for its user: results.json and the other result files (`results`), per-rank
logs and the console (`logs`), rank 0's per-round telemetry (`telemetry`; TensorBoard event files
written directly by `tensorboard_events`) and its progress line (`progress`), and report.png with
runs compared side by side (`report`; users call it as `python -m flamby_mpi.report`). May import
`exit`, `storage`, `config`, `registry`; never the plan, the roles or a transport: they hand their
figures in.
"""
