"""A run's state out and back in: the full state (`full_state`) written atomically as a checkpoint
(`write_checkpoint`), resuming safely (a run continues only under the configuration it was started with, unless
told otherwise, and every process takes back its own state) and starting from given backbone weights."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from auxssl.config import RunConfig, from_dict, load_config, to_dict
from auxssl.data.loaders.base import derive_seed
from auxssl.engine.build import process_seed, seed_everything
from auxssl.engine.checkpoint import (
    atomic_save,
    checkpoint_path,
    find_last_checkpoint,
    load_checkpoint,
    process_state,
    prune_checkpoints,
    restore_process_state,
    rng_state,
    set_rng_state,
)
from auxssl.engine.distributed import gather_to_main
from auxssl.errors import InputError, UserError
from auxssl.eval.tracker import TrainClock

if TYPE_CHECKING:
    from auxssl.engine.trainer import Trainer

logger = logging.getLogger("auxssl")

#: Settings that do not change what a run computes, free to differ when resuming.
FREE_TO_CHANGE = ("name", "output_dir", "train.device", "train.progress", "data.num_workers", "logging.")


class ResumeMismatchError(UserError):
    """The configuration differs from the one the run was started with (``differences``: one line each)."""

    def __init__(self, message: str, differences: list[str]) -> None:
        super().__init__(message)
        self.differences = differences


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` → ``{"a.b": 1}`` (lists stay values)."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value and not key.endswith("args"):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[prefix + key] = value
    return flat


def config_differences(saved: dict[str, Any], requested: dict[str, Any]) -> list[str]:
    """``key: saved → requested`` for every setting that differs and matters (not in `FREE_TO_CHANGE`)."""
    old, new = flatten(saved), flatten(requested)
    lines = []
    for key in sorted(set(old) | set(new)):
        if key.startswith(FREE_TO_CHANGE) or old.get(key) == new.get(key):
            continue
        lines.append(f"{key}: {old.get(key, '(unset)')!r} → {new.get(key, '(unset)')!r}")
    return lines


def check_same_config(saved: dict[str, Any], requested: dict[str, Any], where: str, allow_change: bool) -> list[str]:
    """Refuse (`ResumeMismatchError`) when the settings differ, unless ``allow_change``; returns the differences."""
    differences = config_differences(saved, requested)
    if differences and not allow_change:
        raise ResumeMismatchError(
            f"{where} was started with other settings; continuing it would relabel its results. Differences: "
            + "; ".join(differences)
            + ". Use another run name or --output-dir for a new run, or --allow-config-change to continue anyway.",
            differences,
        )
    return differences


class NonFiniteLossError(UserError, RuntimeError):
    """The loss became NaN or infinite; training stopped and the last good checkpoint was kept."""


def write_checkpoint(trainer: Trainer) -> Path | None:
    """Write the trainer's `full_state` atomically to its run directory (the path; None on ranks other than 0);
    weights that are no longer finite are never checkpointed.

    Every process calls it at the same step (it gathers each rank's `process_state` to rank 0, which writes one
    file); the weights are identical on every rank, so every rank reaches the same verdict on them."""
    finite = torch.stack([torch.isfinite(p).all() for p in trainer.model.parameters()]).all()
    if not bool(finite):
        raise NonFiniteLossError(
            f"weights became non-finite at epoch {trainer.epoch}, step {trainer.step}; not checkpointed. "
            f"Last good checkpoint: {find_last_checkpoint(trainer.run_dir) or 'none yet'}. Lower optim.lr.")
    with trainer.clock.paused():  # checkpointing is not training time (nor is evaluation)
        dist = trainer.dist
        processes = gather_to_main(process_state(trainer.model, trainer.device), dist) if dist.enabled else None
        if not dist.is_main:
            return None
        path = checkpoint_path(trainer.run_dir, trainer.step)
        state = full_state(trainer)
        if processes is not None:
            state["processes"] = processes
        atomic_save(state, path)
        prune_checkpoints(trainer.run_dir)
    return path


def full_state(trainer: Trainer) -> dict[str, Any]:
    """Everything a run needs to continue where it was (what `resume_run` restores): every module's weights, the
    optimiser, the scaler, the online probes, the position in the run, the clock, the RNG states and the config."""
    return {
        "model": trainer.model.state_dict(),
        "backbone": trainer.model.backbone.state_dict(),
        "optimizer": trainer.optimizer.state_dict(),
        "scaler": trainer.scaler.state_dict() if trainer.scaler else None,
        **trainer.online_probes.checkpoint_state(),
        "step": trainer.step, "epoch": trainer.epoch, "batch_in_epoch": trainer.batch_in_epoch,
        "images_seen": trainer.images_seen, "train_time_s": trainer.clock.elapsed,
        "train_cpu_s": trainer.clock.cpu_elapsed, "rng": rng_state(trainer.device), "config": to_dict(trainer.config),
    }


def resume_run(trainer: Trainer, path: Path | None, allow_config_change: bool) -> bool:
    """Restore ``trainer`` from ``path`` (default: the run's last checkpoint), after checking that the settings are
    the run's own (`check_same_config`); returns whether a setting was changed (with ``allow_config_change``)."""
    changed = False
    requested = to_dict(trainer.config)
    saved_config = trainer.run_dir / "config.yaml"
    if saved_config.exists():  # the run's own settings, also when it stopped before its first checkpoint
        saved = to_dict(load_config(saved_config))
        for line in check_same_config(saved, requested, str(trainer.run_dir), allow_config_change):
            logger.warning("resuming with a changed setting: %s", line)
            trainer._config_changed = True
    path = path or find_last_checkpoint(trainer.run_dir)
    if path is None:
        logger.info("no checkpoint in %s: starting from scratch", trainer.run_dir)
        if trainer.log is not None:
            trainer.log.truncate_after(-1)  # records of the interrupted attempt would be duplicated
        return changed
    state = load_checkpoint(path)
    # (settings added to auxssl after the checkpoint was written take their defaults)
    check_same_config(to_dict(from_dict(RunConfig, state["config"])), requested, str(path), allow_config_change)
    trainer.model.load_state_dict(state["model"])
    trainer.optimizer.load_state_dict(state["optimizer"])
    if trainer.scaler is not None and state["scaler"] is not None:
        trainer.scaler.load_state_dict(state["scaler"])
    trainer.online_probes.load_checkpoint_state(state)
    trainer.step, trainer.epoch, trainer.batch_in_epoch = state["step"], state["epoch"], state["batch_in_epoch"]
    trainer.images_seen = state["images_seen"]
    trainer.clock = TrainClock(state["train_time_s"], state.get("train_cpu_s", 0.0))
    set_rng_state(state["rng"], trainer.device)
    if trainer.dist.enabled:
        restore_own_process_state(trainer, state.get("processes"), path)
    if trainer.log is not None:
        trainer.log.truncate_after(trainer.step)
    logger.info("resumed %s at epoch %d, step %d", path, trainer.epoch, trainer.step)
    return changed

def restore_own_process_state(trainer: Trainer, processes: list[dict[str, Any]] | None, path: Path) -> None:
    """Each rank takes back its own random streams and buffers (not rank 0's, which the model state holds).
    A checkpoint from another number of processes (or from before per-process states were saved) cannot
    give every rank its own: the ranks then draw fresh streams, seeded by rank and step, and say so."""
    if processes is not None and len(processes) == trainer.dist.world_size:
        restore_process_state(processes[trainer.dist.rank], trainer.model, trainer.device)
        return
    written = "an older auxssl" if processes is None else f"{len(processes)} processes"
    if trainer.dist.is_main:
        logger.warning("%s was written by %s, not %d: each process restarts its random streams (and keeps rank "
                       "0's buffers, such as SwAV's queue); the run continues but is not the uninterrupted one",
                       path, written, trainer.dist.world_size)
    seed_everything(derive_seed(process_seed(trainer.config.train.seed, trainer.dist.rank, trainer.dist.world_size),
                                trainer.step) % 2**31, False)

def initialise_backbone(trainer: Trainer, path: Path) -> None:
    """Backbone weights from ``path`` (an exported state_dict or a training checkpoint), copied into every
    momentum (target) network that mirrors the backbone."""
    state = load_checkpoint(path)
    if isinstance(state.get("backbone"), dict):
        state = state["backbone"]
    try:
        trainer.model.backbone.load_state_dict(state)
    except RuntimeError as err:
        raise InputError(f"--init {path}: the weights do not fit model.backbone={trainer.config.model.backbone} "
                         f"(width {trainer.config.model.width}): {str(err).splitlines()[0]}") from err
    for online, target in trainer.model.momentum_pairs():
        target.load_state_dict(online.state_dict())
    logger.info("initialised the backbone from %s", path)
