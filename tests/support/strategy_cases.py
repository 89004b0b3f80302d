"""The strategy cases every cross-strategy test runs: each FLamby strategy with the
hyperparameters it needs, plus client sampling and differential privacy (opacus, optional).
A case's name starts with its strategy (`FedAvg-dp` runs FedAvg)."""
import importlib.util

CASES = {
    "FedAvg": [],
    "FedProx": ["--set", "train_args.mu=0.5"],
    "FedAdam": ["--set", "train_args.server_learning_rate=0.05"],
    "FedYogi": ["--set", "train_args.server_learning_rate=0.05"],
    "FedAdagrad": ["--set", "train_args.server_learning_rate=0.05"],
    "Scaffold": [],
    "Cyclic": [],
    "Cyclic-own-models": ["--set", "train_args.pass_model_on=false"],
    "FedAvgFineTuning": ["--set", "train_args.num_fine_tuning_steps=4"],
    "FedAvg-sampled": ["--set", "train_args.client_num_per_round=2"],
    "FedAvg-dp": ["--set", "train_args.dp_target_epsilon=5", "--set", "train_args.dp_target_delta=0.001",
                  "--set", "train_args.dp_max_grad_norm=1.0"],
}
HAVE_OPACUS = importlib.util.find_spec("opacus") is not None


def strategy_of(case: str) -> str:
    return case.split("-")[0]
