"""Stand-in data writers, one module per FLamby dataset (see scripts/standin_data.py)."""
