"""FedAvg: clients train num_updates steps; the server averages updates weighted by train-set size."""
from .base import Strategy


class FedAvg(Strategy):
    name = "FedAvg"
