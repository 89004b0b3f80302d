"""--resume: agree on the latest checkpoint every rank can use, check the config, restore.

1. Rank 0 reads the manifests in <output_dir>/checkpoints (newest first), skipping and
   naming any it cannot read, and refuses a config that would change the result.
2. It sends the usable rounds and their file lists to every rank (one broadcast); each rank
   checks its own files (sizes, sha256) against them: ranks may sit on hosts that share no
   filesystem, and only a rank's own host has its files.
3. One allgather: the newest round every rank holds intact is resumed; newer, incomplete
   cuts are deleted by each rank.
A run never starts afresh over an earlier run's checkpoints: flamby_mpi.storage.run_directory refuses
that directory, or deletes them with --overwrite, so a later --resume never mixes two runs.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Tuple

from .. import __version__
from ..exit.errors import UserError, clip
from ..outputs.logs import SHOWN_WHEN_QUIET
from . import checkpoint


def config_problem(plan, recorded: dict, cut: int) -> Optional[str]:
    """Why this plan cannot continue the run a checkpoint recorded (None: it can)."""
    differing = plan.result_changing_differences(recorded)
    if differing:
        shown = "; ".join(f"{k}: {old!r} in the checkpoint, {new!r} now" for k, old, new in differing)
        return (f"the config differs from the checkpointed run's in what decides the result ({shown}). "
                "Resume with the same config (only comm_round may grow, and timeouts, log level, "
                "tensorboard and checkpoint settings may change), or start a new run with another --run_id")
    rounds_change = plan.rounds_change(recorded)
    if rounds_change is not None:
        if plan.rounds < cut:
            return (f"train_args.comm_round is {plan.rounds}, but the checkpoint has {cut} rounds done: "
                    f"give at least {cut}")
        if plan.privacy is not None:
            return ("train_args.comm_round cannot change on resume with differential privacy: opacus "
                    "sets the noise from the number of rounds; resume with comm_round "
                    f"{rounds_change[0]!r}")
    return None


def _offer(plan) -> Dict:
    """Rank 0: the usable checkpoints, newest first, or why there is none."""
    output_dir = plan.output_dir
    rounds = checkpoint.rounds_on_disk(output_dir)
    where = checkpoint.checkpoints_dir(output_dir)
    if not rounds:
        return {"error": f"--resume: no checkpoint in {where}: this run never completed a checkpointed "
                         f"round there. Check --run_id / common_args.output_dir, or start without --resume"}
    candidates, warnings = [], []
    for round_idx in rounds:
        try:
            manifest = checkpoint.read_manifest(output_dir, round_idx)
        except checkpoint.CheckpointError as error:
            warnings.append(f"checkpoint of round {round_idx} skipped: {error}")
            continue
        if manifest["flamby_mpi"] != __version__:
            return {"error": f"--resume: the checkpoint of round {round_idx} was written by flamby-mpi "
                             f"{manifest['flamby_mpi']}, this is {__version__}: resume it with that version"}
        if manifest["world_size"] != plan.world_size:
            return {"error": f"--resume: the checkpoint of round {round_idx} has {manifest['world_size']} ranks, "
                             f"this run {plan.world_size}"}
        if not candidates:  # the newest usable manifest decides whether the config fits
            problem = config_problem(plan, manifest["config"], round_idx)
            if problem:
                return {"error": f"--resume: {problem}"}
        if round_idx <= plan.rounds:
            candidates.append([round_idx, manifest["files"]])
    if not candidates:
        return {"error": f"--resume: no complete checkpoint in {where}: " + "; ".join(warnings),
                "warnings": []}
    return {"candidates": candidates, "warnings": warnings}


def _intact_rounds(plan, rank: int, candidates: List) -> Tuple[List[int], List[Tuple[int, str]],
                                                               Optional[checkpoint.RankFiles]]:
    """The candidate rounds whose files of this rank match the manifest, the problems of the
    others, and this rank's files of the newest intact round, still open as checked: the cut
    agreed on is that round unless another rank lacks it, and then it is loaded without being
    opened again (the file checked is the file loaded)."""
    intact, problems, newest = [], [], None
    for round_idx, files in candidates:
        try:
            checked = checkpoint.check_rank_files(plan.output_dir, round_idx, rank, files[str(rank)])
        except checkpoint.CheckpointError as error:
            problems.append((round_idx, str(error)))
            continue
        intact.append(round_idx)
        if newest is None:
            newest = checked
        else:
            checked.close()
    return intact, problems, newest


def agree_and_restore(plan, transport, server_run, client_runs, console) -> Optional[int]:
    """Every rank: restores the roles of this process from the newest checkpoint intact on every
    rank. Returns the round resumed; raises UserError (on every rank) when there is none."""
    offer = transport.agree(_offer(plan) if transport.rank == 0 else None)
    if "error" in offer:
        raise UserError(offer["error"])
    local, held = {}, {}
    try:
        for rank in transport.local_ranks:
            intact, problems, held[rank] = _intact_rounds(plan, rank, offer["candidates"])
            local[rank] = (intact, problems)
        gathered: Dict[int, Tuple[List[int], List[Tuple[int, str]]]] = {}
        for part in transport.allgather(local):
            gathered.update(part)
        common = set(r for r, _ in offer["candidates"])
        for intact, _ in gathered.values():
            common &= set(intact)
        problems = [p for _, (_, ps) in sorted(gathered.items()) for p in ps]
        if not common:
            raise UserError("--resume: no checkpoint is intact on every rank: " +
                            "; ".join(t for _, t in problems))
        cut = max(common)
        files = dict(next(f for r, f in offer["candidates"] if r == cut))
        skipped = list(offer["warnings"]) + [f"checkpoint of round {r} skipped: {text}" for r, text in problems
                                             if r > cut]
        path = str(checkpoint.round_dir(plan.output_dir, cut))
        kept = sorted(common)[-plan.keep_checkpoints:]
        unusable = []
        for rank in transport.local_ranks:
            checked = held.pop(rank)
            if checked is not None and checked.round_idx != cut:
                checked.close()
                checked = None
            try:
                _restore_rank(plan, cut, rank, path, server_run, client_runs, files[str(rank)], checked)
            except checkpoint.CheckpointError as error:
                unusable.append(str(error))
    finally:
        for checked in held.values():
            if checked is not None:
                checked.close()
    unusable = [text for part in transport.allgather(unusable) for text in part]
    if unusable:  # every rank stops here, so that none waits for the others in vain
        raise UserError(f"--resume: the checkpoint of round {cut} cannot be restored: " + "; ".join(unusable),
                        hint="it was altered after it was written; delete that round's directory to resume "
                             "from an earlier checkpoint, or start afresh without --resume")
    for rank in transport.local_ranks:
        # Newer cuts are incomplete or damaged, older ones past keep_checkpoints: this rank's part goes.
        checkpoint.remove_rank_checkpoints(plan.output_dir, rank, keep=kept)
    if server_run is not None:
        server_run.written_cuts = list(kept)
        for text in skipped:
            console.warning("%s", text)
        console.info("resumed from round %d (%s)", cut, path, extra=SHOWN_WHEN_QUIET)
    for client in client_runs:
        client.start_round = cut
        client.written_cuts = list(kept)
    return cut


def _restore_rank(plan, cut: int, rank: int, path: str, server_run, client_runs, entries,
                  checked: Optional[checkpoint.RankFiles]):
    """Restores one rank from its files of the cut: those held open since they were checked, or,
    when the cut is older than this rank's newest intact one, opened and checked again now."""
    if checked is None:
        checked = checkpoint.check_rank_files(plan.output_dir, cut, rank, entries)
    with checked:
        tensors, data = checked.load()
    try:
        if rank == 0:
            server_run.restore(tensors, data, cut, path)
        else:
            next(c for c in client_runs if c.rank == rank).restore(tensors, data)
    except checkpoint.CheckpointError:
        raise
    except Exception as exc:  # noqa: BLE001 - files that match their manifest but not this run's state
        raise checkpoint.CheckpointError(
            f"{path}: rank {rank}'s state does not fit this run ({type(exc).__name__}: {clip(str(exc))})") from None

