"""PyTorch Lightning callbacks for what auxssl measures in its own engine.

- `RunRecorder` writes the run directory auxssl's engine writes (``run.json``, ``metrics.jsonl``: training
  metrics, images seen, training wall-clock and CPU time with evaluation excluded), so ``auxssl report``
  compares Lightning runs with and without an auxiliary task, and with auxssl-engine runs, exactly as it compares
  its own.
- `SeedPerRank` gives every DDP process its own random stream once the model is built (``seed_everything``
  seeds every rank alike: each would draw the same augmentations and rotation labels).
- `KNNMonitor` runs auxssl's weighted kNN on a labelled set every N epochs, with the recorder's training clock
  paused; `KNNMonitor.like_auxssl` builds the same bank and test images as an engine run of the same settings
  and records the evaluation settings in the same form, which is what makes the two comparable.

Needs ``pip install 'auxssl[lightning]'`` (``lightning``; ``pytorch_lightning`` works too).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn

try:
    from lightning.pytorch import Callback, LightningModule, Trainer
except ImportError:  # the older package name (lightly depends on it)
    try:
        from pytorch_lightning import Callback, LightningModule, Trainer
    except ImportError as err:
        raise ImportError("auxssl.integrations.lightning needs Lightning: pip install 'auxssl[lightning]'") from err

from auxssl.config import load_config
from auxssl.data.datasets import ImageDataset
from auxssl.data.loaders.base import derive_seed
from auxssl.engine.build import build_datasets, evaluation_data
from auxssl.engine.machine import machine_info
from auxssl.engine.precision import resolve_precision
from auxssl.eval.knn import KNNProtocol
from auxssl.eval.offline import evaluate_backbone
from auxssl.eval.sharded import EvalGroup
from auxssl.eval.tracker import MetricsLog, RunInfo, TrainClock, WindowMeans, write_run_info


def _batch_size(batch: Any) -> int:
    """The number of samples of a batch: the length of its first tensor (views, images or labels)."""
    if isinstance(batch, Tensor):
        return len(batch)
    items = batch.values() if isinstance(batch, Mapping) else batch if isinstance(batch, Sequence) else ()
    for item in items:
        if (size := _batch_size(item)) > 0:
            return size
    return 0


class SeedPerRank(Callback):
    """Seed every process with its own stream, derived from ``(seed, global rank)``, once the model exists.

    ``seed_everything(seed)`` seeds every DDP rank alike, so each rank would draw the same random numbers in its
    main process: the same augmentations (DataLoader without workers) and the same rotation labels for its
    different images — W processes that draw as one (Lightning issue #16166; DeiT and DETR seed ``seed + rank``
    for this reason). At ``setup``, after the model is built and before DDP copies rank 0's weights to every
    rank, this seeds torch (every device), NumPy and ``random``. Rank 0's stream is the same with one process
    or several. Worker processes are seeded by the DataLoader from the main process's stream."""

    def __init__(self, seed: int) -> None:
        self.seed = seed

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        seed = derive_seed(self.seed, trainer.global_rank)
        torch.manual_seed(seed)
        np.random.seed(seed % 2**32)
        random.seed(seed)


class RunRecorder(Callback):
    """Record a Lightning run as auxssl's engine records its runs (``run_dir/run.json``, ``metrics.jsonl``).

    Training records hold the means of every scalar the ``training_step`` returns (its ``"loss"`` and whatever
    else its dict holds: ``loss/rotation``, ``acc/rotation``, …) over ``log_every_n_steps`` batches (rank 0's
    batches under DDP; ``images_seen`` counts every rank's); evaluation records come from `KNNMonitor`.
    ``method``, ``tasks`` and ``seed`` identify the variant (runs differing only by seed are averaged by
    ``auxssl report``); ``budget`` is free-form (epochs, batch size, … as you state them).
    Only global rank 0 writes. The recorder's position is saved in Lightning checkpoints and resumed.
    """

    def __init__(self, run_dir: str | Path, *, method: str, tasks: Sequence[str] = (), seed: int = 0,
                 dataset: str = "", name: str | None = None, log_every_n_steps: int = 50,
                 budget: Mapping[str, Any] | None = None) -> None:
        self.run_dir = Path(run_dir)
        self.info = RunInfo(name=name or self.run_dir.name, method=method, dataset=dataset, tasks=list(tasks),
                            seed=seed, budget=dict(budget or {}))
        self.every = log_every_n_steps
        self.clock = TrainClock()
        self.window = WindowMeans()
        self.step = self.images_seen = 0
        self._at_log = (0.0, 0)
        self._log: MetricsLog | None = None
        self._steps_per_epoch = 1

    # ----------------------------------------------------------------------------------------- hooks
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage == "fit" and trainer.is_global_zero and self._log is None:
            self._log = MetricsLog(self.run_dir)
            if self.step:
                self._log.truncate_after(self.step)  # resumed: what was logged after the checkpoint is redone
            self.info.epochs = int(trainer.max_epochs or 0)
            self.info.machine = machine_info(pl_module.device)
            write_run_info(self.run_dir, self.info)

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._steps_per_epoch = max(1, int(trainer.num_training_batches))
        self.info.budget = {"epochs": self.info.epochs, "steps_per_epoch": self._steps_per_epoch,
                            "world_size": trainer.world_size, **self.info.budget}
        self.info.machine = machine_info(pl_module.device)  # on the device training runs on
        if self._log is not None:
            write_run_info(self.run_dir, self.info)
        self._at_log = (self.clock.elapsed, self.images_seen)
        self.clock.start()

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self.step += 1
        self.images_seen += _batch_size(batch) * trainer.world_size
        terms = {"loss": outputs} if isinstance(outputs, Tensor) else dict(outputs or {})
        for key, value in terms.items():
            if isinstance(value, Tensor) and value.numel() == 1:
                self.window.add(key, value.detach())
        if self.step % self.every == 0 or (batch_idx + 1) == trainer.num_training_batches:
            now = self.clock.elapsed
            metrics = self.window.means()
            metrics["images_per_s"] = (self.images_seen - self._at_log[1]) / max(now - self._at_log[0], 1e-9)
            self._append("train", metrics)
            self.window.reset()
            self._at_log = (now, self.images_seen)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.clock.stop()

    # ------------------------------------------------------------------------------------ evaluation
    @contextmanager
    def paused(self) -> Iterator[None]:
        """The training clock stopped (evaluation is not training time)."""
        with self.clock.paused():
            yield

    def record_evaluation(self, metrics: Mapping[str, float], evaluation: Mapping[str, dict],
                          protocol: Mapping[str, str], epoch: int | None = None) -> None:
        """An evaluation record, and its settings in ``run.json`` (as auxssl's engine records them)."""
        self.info.evaluation.update(evaluation)
        self.info.protocol.update(protocol)
        if self._log is not None:
            write_run_info(self.run_dir, self.info)
        self._append("eval", dict(metrics), epoch)

    def _append(self, kind: str, metrics: dict[str, float], epoch: float | None = None) -> None:
        if self._log is None:
            return
        at = round(self.step / self._steps_per_epoch, 4) if epoch is None else epoch
        self._log.append(kind, epoch=at, step=self.step, images_seen=self.images_seen,
                         train_time_s=self.clock.elapsed, train_cpu_s=self.clock.cpu_elapsed, **metrics)

    # ------------------------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step, "images_seen": self.images_seen, "train_time_s": self.clock.elapsed,
                "train_cpu_s": self.clock.cpu_elapsed}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.step, self.images_seen = state_dict["step"], state_dict["images_seen"]
        self.clock = TrainClock(state_dict["train_time_s"], state_dict["train_cpu_s"])


class KNNMonitor(Callback):
    """auxssl's weighted kNN (`auxssl.eval.knn`) on ``bank`` / ``test`` every ``every_n_epochs`` epochs and after
    the last, logged with ``pl_module.log_dict`` and, when a `RunRecorder` is among the trainer's callbacks, in its
    run directory with the training clock paused.

    ``backbone``: the attribute of the LightningModule holding the backbone (default ``"backbone"``) or a function
    returning it; pooled outputs ``(B, D, 1, 1)`` are flattened. Under several processes the evaluation is
    sharded as in auxssl's engine (`auxssl.eval.sharded`).
    """

    def __init__(self, bank: ImageDataset, test: ImageDataset, *, every_n_epochs: int = 1, at_start: bool = False,
                 image_size: int | None = None, k: int = 200, temperature: float = 0.1, precision: str = "auto",
                 backbone: str | Callable[[LightningModule], nn.Module] = "backbone", num_workers: int = 0,
                 describe: Callable[[str], tuple[dict, str]] | None = None) -> None:
        self.bank, self.test = bank, test
        self.every, self.at_start = every_n_epochs, at_start
        self.image_size, self.precision, self.num_workers = image_size, precision, num_workers
        self.protocol = KNNProtocol(k, temperature)
        self.backbone = backbone
        self._describe = describe
        self._group: EvalGroup | None = None
        #: The training images of `like_auxssl` (what an engine run of those settings trains on).
        self.train_set: ImageDataset | None = None

    @classmethod
    def like_auxssl(cls, dataset: str, *, root: str | None = None, train_subset: int | None = None,
                    test_subset: int | None = None, bank: str = "train", image_size: int = 32,
                    precision: str = "auto", **kwargs: Any) -> KNNMonitor:
        """The kNN of an auxssl run with these ``data.*`` / ``eval.*`` settings: the same fixed random subsets,
        image size and feature precision, recorded as that run records them (so ``auxssl report`` compares the
        two). The training images are in ``train_set``."""
        config = load_config(None, [f"data.dataset={dataset}", f"data.image_size={image_size}",
                                    f"eval.bank={bank}", f"eval.precision={precision}",
                                    *([f"data.root={root}"] if root else []),
                                    *([f"data.train_subset={train_subset}"] if train_subset else []),
                                    *([f"eval.test_subset={test_subset}"] if test_subset else [])])
        train, bank_set, test = build_datasets(config)

        def describe(resolved_precision: str) -> tuple[dict, str]:
            return evaluation_data(config, bank_set, test, image_size, resolved_precision)

        monitor = cls(bank_set, test, image_size=image_size, precision=precision, describe=describe, **kwargs)
        monitor.train_set = train
        return monitor

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if trainer.world_size > 1 and dist.is_initialized() and self._group is None:
            self._group = EvalGroup.create(timeout_s=3600.0)

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.at_start and trainer.current_epoch == 0:
            self._evaluate(trainer, pl_module, epoch=0)

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        epoch = trainer.current_epoch + 1
        if epoch % self.every == 0 or epoch == trainer.max_epochs:
            self._evaluate(trainer, pl_module, epoch)

    def _evaluate(self, trainer: Trainer, pl_module: LightningModule, epoch: int) -> None:
        backbone = getattr(pl_module, self.backbone) if isinstance(self.backbone, str) else self.backbone(pl_module)
        recorder = next((c for c in trainer.callbacks if isinstance(c, RunRecorder)), None)
        with recorder.paused() if recorder is not None else nullcontext():  # evaluation is not training time
            metrics = evaluate_backbone(backbone, self.bank, self.test, knn=self.protocol, device=pl_module.device,
                                        image_size=self.image_size, precision=self.precision, group=self._group,
                                        num_workers=self.num_workers)
            # every rank holds the same results (the sharded evaluation returns them to all); sync_dist averages
            # identical values, so a checkpoint or early-stopping callback may monitor them under DDP
            pl_module.log_dict(metrics, sync_dist=True)
            if recorder is not None:
                precision = resolve_precision(self.precision, pl_module.device).name
                data, text = self._describe(precision) if self._describe else self._own_description(precision)
                recorder.record_evaluation(metrics, {"data": data, "knn": asdict(self.protocol)},
                                           {"data": text, "knn": self.protocol.describe()}, epoch)

    def _own_description(self, precision: str) -> tuple[dict, str]:
        data = {"dataset": self.test.name, "image_size": self.image_size, "bank_size": len(self.bank),
                "test_size": len(self.test), "feature_precision": precision}
        return data, (f"features at {self.image_size} px ({precision}); bank: {len(self.bank)} images of "
                      f"{self.bank.name}; test: {len(self.test)} images of {self.test.name}")

