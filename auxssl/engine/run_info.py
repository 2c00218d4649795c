"""What `run.json` says about a run: its identity, every setting that changes its evaluations, its budget."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from auxssl.config import NoiseConfig, RunConfig, TaskConfig, to_dict
from auxssl.engine.build import evaluation_data, resolve_backend
from auxssl.engine.machine import machine_info
from auxssl.engine.resume import flatten
from auxssl.eval.evaluators import describe_evaluators
from auxssl.eval.tracker import RunInfo

if TYPE_CHECKING:
    from auxssl.data.datasets import ImageDataset
    from auxssl.engine.trainer import Trainer

logger = logging.getLogger("auxssl")

#: The file of a run directory listing the unreadable images its datasets left out, one path a line.
SKIPPED_IMAGES = "skipped_images.txt"


def task_label(task: TaskConfig) -> str:
    """A task's name in reports: ``rotation`` with its defaults, else its settings, e.g. ``rotation(size=16)``,
    so that runs of differently configured tasks are never grouped as seeds of one variant."""
    settings = dict(task.args)
    if task.weight != TaskConfig().weight:
        settings["weight"] = task.weight
    return task.name + ("(" + ", ".join(f"{k}={v}" for k, v in sorted(settings.items())) + ")" if settings else "")


def noise_knobs(noise: NoiseConfig) -> dict[str, Any]:
    """The noise-control knobs that differ from their defaults, flattened (``fn_injection.classes_per_batch``);
    ``good_crop_iou`` only where it changes the data (with ``good_crop_fraction``)."""
    defaults = flatten(to_dict(NoiseConfig()))
    knobs = {k: v for k, v in flatten(to_dict(noise)).items() if v != defaults.get(k)}
    knobs.pop("measure", None)
    if not noise.good_crop_fraction:
        knobs.pop("good_crop_iou", None)
    return knobs


def describe_run(trainer: Trainer) -> RunInfo:
    """The run's identity, every setting that changes its evaluations, and its training budget."""
    cfg = trainer.config
    data, data_text = evaluation_data(cfg, trainer.bank_set, trainer.test_set, trainer.eval_image_size,
                                      trainer.eval_precision)
    protocol: dict[str, str] = {"data": data_text}
    evaluation: dict[str, dict[str, Any]] = {"data": data}
    if trainer.no_evaluation is not None:  # nothing is evaluated: say why instead of describing evaluators
        protocol = {"data": f"no evaluation: {trainer.no_evaluation}"}
        evaluation = {"data": {"none": trainer.no_evaluation}}
    else:
        offline = describe_evaluators(trainer.evaluators)
        online = describe_evaluators(trainer.online_probes.active())
        protocol.update({**offline[0], **online[0]})
        evaluation.update({**offline[1], **{name: {**settings, "reveal_labels": cfg.data.reveal_labels}
                                            for name, settings in online[1].items()}})
    budget = {
        "epochs": cfg.train.epochs, "batch_size": cfg.data.batch_size, "steps_per_epoch": trainer.steps_per_epoch,
        "train_images": len(trainer.train_set), "train_subset": cfg.data.train_subset,
        "image_size": cfg.data.image_size, "backbone": cfg.model.backbone, "recipe": cfg.data.recipe,
        "precision": trainer.precision.label, "world_size": trainer.dist.world_size,
        "backend": getattr(trainer.loader, "backend", resolve_backend(cfg, trainer.train_set, trainer.device)),
        "init": trainer.init,
        "skipped_images": len(trainer.skipped_images()),
    }
    tasks = getattr(trainer.model, "tasks", [])
    chance = {f"acc/{t.name}": 100.0 / t.num_classes for t in tasks if getattr(t, "num_classes", 0)}
    return RunInfo(name=cfg.name, method=cfg.model.method, dataset=cfg.data.dataset,
                   tasks=[task_label(t) for t in cfg.tasks], seed=cfg.train.seed, epochs=cfg.train.epochs,
                   protocol=protocol, evaluation=evaluation, budget=budget, noise=noise_knobs(cfg.noise),
                   chance=chance, no_evaluation=trainer.no_evaluation, machine=machine_info(trainer.device))


def why_no_evaluation(config: RunConfig, bank: ImageDataset, test: ImageDataset) -> str | None:
    """Why a run has no evaluation (said in run.json and the report), None when it has one."""
    if config.eval.every_epochs <= 0:
        return "eval.every_epochs is 0"
    if bank.labelled and test.labelled:
        return None
    unlabelled = bank if not bank.labelled else test
    reason = f"{unlabelled.name} has no labels ({unlabelled.description or 'unlabelled'}); kNN and probes need them"
    logger.warning("evaluation skipped: %s; set eval.dataset and eval.root to a labelled evaluation set", reason)
    return reason


def skipped_images(datasets: Sequence[ImageDataset]) -> list[str]:
    """The unreadable files left out of ``datasets`` so far, each once."""
    sources = {id(d.source): d.source for d in datasets}
    return list(dict.fromkeys(path for source in sources.values() for path in getattr(source, "skipped", [])))


def record_skipped_images(run_dir: Path, skipped: list[str]) -> None:
    """List the unreadable files in the run directory and say so in one line (when there are any, or more than
    were recorded)."""
    listing = run_dir / SKIPPED_IMAGES
    known = listing.read_text().splitlines() if listing.exists() else []
    if skipped and set(skipped) - set(known):
        listing.write_text("".join(f"{path}\n" for path in dict.fromkeys(known + skipped)))
        count = len(set(known) | set(skipped))
        logger.warning("skipped %d unreadable image%s (not trained or evaluated on): listed in %s",
                       count, "" if count == 1 else "s", listing)
