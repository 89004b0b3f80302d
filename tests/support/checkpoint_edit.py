"""Rewrites a client's part of a complete checkpoint as a test needs it, then its manifest entry
(size and sha256) to match, so that --resume reads the part as one flamby-mpi wrote."""
import hashlib
import json
from pathlib import Path

import torch


def newest_complete_cut(output_dir: Path) -> Path:
    cuts = [d for d in (output_dir / "checkpoints").iterdir() if (d / "manifest.json").exists()]
    return max(cuts, key=lambda d: int(d.name.split("_")[1]))


def poisoned(state: dict) -> dict:
    """Every entry of a model's state_dict replaced by garbage of its shape and type: NaN for
    floating tensors (weights, BatchNorm's running statistics), a wild count for the others
    (num_batches_tracked)."""
    return {k: torch.full_like(v, float("nan")) if v.is_floating_point() else torch.full_like(v, 987654)
            for k, v in state.items()}


def give_clients_a_poisoned_model(cut: Path, ranks) -> None:
    """Adds `learner.model` (the entry checkpoints had before clients stopped saving their model,
    so the layout of an older checkpoint) to these clients' parts of cut, every entry garbage:
    a resume that used a client's saved model, or a model the client held before the server's
    first message, would then train from NaN."""
    manifest_path = cut / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    global_model = torch.load(cut / "rank_0.pt", weights_only=True)["model"]
    for rank in ranks:
        path = cut / f"rank_{rank}.pt"
        tensors = torch.load(path, weights_only=True)
        assert "model" not in tensors["learner"], "clients save no model any more"
        tensors["learner"]["model"] = poisoned(global_model)
        torch.save(tensors, path)
        data = path.read_bytes()
        manifest["files"][str(rank)][path.name] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    manifest_path.write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
