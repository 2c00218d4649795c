"""The training loop: explicit and linear, in the spirit of DINO's.

One step: learning rate from the precomputed schedule → autocast forward → finite-loss check → backward (with a
GradScaler for CUDA fp16) → method hook → optimiser step → EMA of the momentum pairs with the precomputed τ.
Evaluations run with the training clock paused; checkpoints hold the full state and are written atomically.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import random
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.utils.checkpoint import checkpoint

from auxssl.auxiliary import OnlineFeatureRecorder
from auxssl.config import NoiseConfig, RunConfig, TaskConfig, from_dict, load_config, save_config, to_dict
from auxssl.data.loaders.base import derive_seed
from auxssl.engine.build import (
    RunDatasets,
    build_datasets,
    build_model,
    build_train_loader,
    evaluation_data,
    memory_budget,
    process_seed,
    resolve_backend,
)
from auxssl.engine.checkpoint import (
    atomic_save,
    checkpoint_path,
    find_last_checkpoint,
    load_checkpoint,
    process_state,
    prune_checkpoints,
    remove_partial_writes,
    restore_process_state,
    rng_state,
    set_rng_state,
)
from auxssl.engine.distributed import (
    DistributedContext,
    convert_batchnorm,
    gather_to_main,
    init_distributed,
    wrap_ddp,
)
from auxssl.engine.loggers import build_sinks
from auxssl.engine.machine import machine_info
from auxssl.engine.optim import build_optimizer
from auxssl.engine.precision import resolve_device, resolve_precision
from auxssl.engine.preemption import Preempted, PreemptionGuard
from auxssl.engine.resume import check_same_config, flatten
from auxssl.engine.schedules import ema_schedule, warmup_cosine
from auxssl.errors import InputError, UserError
from auxssl.eval.knn import KNNProtocol
from auxssl.eval.linear import OnlineLinearProbe, ProbeConfig
from auxssl.eval.offline import evaluate_backbone
from auxssl.eval.sharded import EvalGroup
from auxssl.eval.tracker import (
    RUN_INFO,
    MetricsLog,
    RunInfo,
    TrainClock,
    WindowMeans,
    read_metrics,
    write_run_info,
)
from auxssl.noise.control import NoiseControl
from auxssl.wrapper import AuxWrapper
from baselines.backbones import feature_dim
from baselines.protocol import Batch

logger = logging.getLogger("auxssl")

#: The file a pre-empted run leaves in its directory (the signal, the checkpoint), removed when it continues: a job
#: script requeues when it exists (torchrun's own exit status does not tell a pre-emption from a failure).
PREEMPTED = "preempted"

#: The file of a run directory listing the unreadable images its datasets left out, one path a line.
SKIPPED_IMAGES = "skipped_images.txt"

#: Under torch.distributed, pre-emption requests are agreed every this many steps (each agreement syncs the host).
PREEMPTION_CHECK_EVERY = 10

#: The key under which a step reports how many labelled samples its online-probe metrics are averaged over.
PROBE_LABELLED = "online_linear/labelled"


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


class NonFiniteLossError(UserError, RuntimeError):
    """The loss became NaN or infinite; training stopped and the last good checkpoint was kept."""


@contextlib.contextmanager
def _batchnorm_stats_restored(module: nn.Module) -> Iterator[None]:
    """Undo every running-statistics update of the batch norms in ``module`` made inside this block."""
    norms = [m for m in module.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]
    saved = [(m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone()) for m in norms]
    try:
        yield
    finally:
        with torch.no_grad():
            for m, (mean, var, count) in zip(norms, saved):
                m.running_mean.copy_(mean)
                m.running_var.copy_(var)
                m.num_batches_tracked.copy_(count)


class CheckpointedStage(nn.Sequential):
    """A ResNet stage whose activations are recomputed in the backward pass (SEER's activation checkpointing).

    Same children, hence the same parameter names, as the `nn.Sequential` it replaces. The recomputation
    leaves batch-norm running statistics untouched, so they advance once per step as without checkpointing.
    """

    def _contexts(self) -> tuple[contextlib.AbstractContextManager, contextlib.AbstractContextManager]:
        return contextlib.nullcontext(), _batchnorm_stats_restored(self)

    def forward(self, x: Tensor) -> Tensor:
        if not (self.training and torch.is_grad_enabled()):
            return super().forward(x)
        if torch.compiler.is_compiling():
            # Dynamo traces the recomputation into the backward graph without replaying the running-statistics
            # update, so no context is needed (and it would call a bound ``context_fn`` without ``self``)
            return checkpoint(super().forward, x, use_reentrant=False)
        return checkpoint(super().forward, x, use_reentrant=False, context_fn=self._contexts)


def enable_activation_checkpointing(backbone: nn.Module) -> None:
    stages = [n for n in ("layer1", "layer2", "layer3", "layer4", "trunk_output")
              if isinstance(getattr(backbone, n, None), nn.Sequential)]
    if not stages:
        raise InputError("activation checkpointing supports torchvision ResNet and RegNet backbones")
    for name in stages:
        setattr(backbone, name, CheckpointedStage(*getattr(backbone, name)))


#: Convolutions narrower than this are kept in the default layout on CPU (see `channels_last_is_safe`).
MIN_CHANNELS_LAST_WIDTH = 16


def channels_last_is_safe(model: nn.Module, device: torch.device) -> bool:
    """False on CPU when a convolution has fewer than 16 output channels (e.g. ``model.width: 8``): with torch 2.15,
    oneDNN's channels-last convolution backward with 8 channels corrupts the heap as soon as the batch size changes
    (a batch shortened by a skipped image, a last batch), reproduced with a bare ResNet; the default layout is
    unaffected."""
    narrow = any(isinstance(m, nn.Conv2d) and m.out_channels < MIN_CHANNELS_LAST_WIDTH for m in model.modules())
    if device.type == "cpu" and narrow:
        logger.info("channels_last off: convolutions narrower than %d channels (oneDNN issue on CPU)",
                    MIN_CHANNELS_LAST_WIDTH)
        return False
    return True


def seed_everything(seed: int, deterministic: bool) -> None:
    """Seed every generator; ``deterministic``: deterministic kernels, else cuDNN autotuning (SSL batches keep
    one shape, so the tuned convolutions are reused every step)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = not deterministic


class Trainer:
    """Trains one run described by a `RunConfig` into ``config.run_dir``.

    Args:
        resume: continue the run in ``config.run_dir`` from its last checkpoint (True) or from a given checkpoint
            file; refused (`ResumeMismatchError`) when the settings differ from the run's own, unless
            ``allow_config_change``. A finished run is not trained again: `fit` returns its final evaluation.
        init: start a new run from backbone weights (``auxssl export`` output or a training checkpoint).
        datasets: replaces the datasets the config names (for data built in code rather than by name).
    """

    def __init__(self, config: RunConfig, resume: bool | str | Path = False, datasets: RunDatasets | None = None,
                 init: str | Path | None = None, allow_config_change: bool = False) -> None:
        self.config = config
        self.device = resolve_device(config.train.device)
        self.dist: DistributedContext = init_distributed(self.device.type)
        if self.dist.enabled and self.device.type == "cuda":
            self.device = torch.device("cuda", self.dist.local_rank)
        self.precision = resolve_precision(config.train.precision, self.device)
        seed_everything(config.train.seed, config.train.deterministic)
        self.run_dir = config.run_dir
        self.train_set, self.bank_set, self.test_set = datasets or build_datasets(config)
        if self.dist.is_main:
            for line in dict.fromkeys(d.description for d in (self.train_set, self.test_set) if d.description):
                logger.info("data: %s", line)
        self.eval_image_size = config.eval.image_size or config.data.image_size
        self.eval_precision = resolve_precision(config.eval.precision, self.device).name
        self.noise: NoiseControl | None = None
        if config.noise.active or config.noise.measure:
            self.noise = NoiseControl(config.noise, self.train_set, config.train.seed, self.dist.rank, self.device)
        self.loader = build_train_loader(config, self.train_set, self.device, self.dist.rank, self.dist.world_size,
                                         self.noise)

        self.model = build_model(config)
        if config.train.activation_checkpointing:
            enable_activation_checkpointing(self.model.backbone)
        if self.dist.enabled:
            self.model = convert_batchnorm(self.model, self.device.type)
            # identical initial weights on every rank (seeded above); from here on each rank draws its own
            # randomness (rotation labels and other draws from the global RNG)
            seed_everything(process_seed(config.train.seed, self.dist.rank, self.dist.world_size), False)
        self.channels_last = config.train.channels_last and channels_last_is_safe(self.model, self.device)
        memory_format = torch.channels_last if self.channels_last else torch.preserve_format
        self.model.to(self.device, memory_format=memory_format)
        self.forward = self.model
        if self.dist.enabled:
            self.forward = wrap_ddp(self.model, self.device)
        if config.train.compile:
            self.forward = torch.compile(self.forward)

        optim = config.optim
        self.base_lr = optim.lr * config.data.batch_size / 256
        self.optimizer = build_optimizer(self.model.param_groups(), optim.name, self.base_lr, optim.weight_decay,
                                         optim.momentum, optim.lars_eta, optim.betas, optim.lars_clip_lr)
        self.steps_per_epoch = len(self.loader)
        if self.steps_per_epoch == 0:
            readable = len(self.train_set) - getattr(self.loader, "skipped", 0)
            where = "" if self.dist.world_size == 1 else f" of this process ({self.dist.world_size} processes)"
            raise InputError(f"data.batch_size={config.data.batch_size} exceeds the {readable} readable training "
                             f"images{where}")
        self.total_steps = config.train.epochs * self.steps_per_epoch
        warmup_steps = round(optim.warmup_epochs * self.steps_per_epoch)
        self.lr_schedule = warmup_cosine(self.base_lr, self.total_steps, warmup_steps,
                                         self.base_lr * optim.min_lr_ratio)
        base_tau = getattr(self.model, "base_tau", None)
        final_tau = getattr(self.model, "final_tau", 1.0)
        self.tau_schedule = ema_schedule(base_tau, self.total_steps, final_tau) if base_tau is not None else None
        self.scaler = torch.amp.GradScaler(self.device.type) if self.precision.needs_scaler else None

        self.knn_protocol = KNNProtocol(config.eval.knn_k, config.eval.knn_temperature)
        self._eval_images: tuple | None = None
        #: Under torch.distributed each rank evaluates its shards (`auxssl.eval.sharded`).
        self.eval_group = EvalGroup.create(config.eval.wait_timeout_s) if self.dist.enabled else None
        self.evaluation_enabled = config.eval.every_epochs > 0
        #: Why this run has no evaluation (None when it has one); in run.json and the report.
        self.no_evaluation: str | None = None if self.evaluation_enabled else "eval.every_epochs is 0"
        if self.evaluation_enabled and not (self.bank_set.labelled and self.test_set.labelled):
            self.evaluation_enabled = False
            unlabelled = self.bank_set if not self.bank_set.labelled else self.test_set
            self.no_evaluation = (f"{unlabelled.name} has no labels ({unlabelled.description or 'unlabelled'}); "
                                  "kNN and probes need them")
            logger.warning("evaluation skipped: %s; set eval.dataset and eval.root to a labelled evaluation set",
                           self.no_evaluation)
        self.online_probe: OnlineLinearProbe | None = None
        if config.eval.online_linear:
            if config.data.reveal_labels <= 0:
                raise InputError("eval.online_linear needs revealed labels: set data.reveal_labels > 0")
            num_classes = int(self.train_set.labels.max()) + 1
            self.online_probe = OnlineLinearProbe(feature_dim(self.model.backbone), num_classes).to(self.device)
            #: the base method's online features: the wrapper's recorder, or one on a method without tasks
            self.features = self.model if isinstance(self.model, AuxWrapper) else OnlineFeatureRecorder(self.model)

        self.step = 0
        self.epoch = 0
        self.batch_in_epoch = 0
        self.images_seen = 0
        self.clock = TrainClock()
        self.log = MetricsLog(self.run_dir) if self.dist.is_main else None
        self.init = None if init is None else str(init)
        self._config_changed = False
        if resume:
            self._resume(None if resume is True else Path(resume), allow_config_change)
        elif self.dist.is_main and (self.run_dir / "metrics.jsonl").exists():
            raise FileExistsError(
                f"{self.run_dir} already holds a run: pass --resume to continue it or choose another name")
        elif init is not None:
            self._initialise_backbone(Path(init))
        if self.dist.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / PREEMPTED).unlink(missing_ok=True)  # continued now
            self._record_skipped_images()
            remove_partial_writes(self.run_dir)
            # a resumed run keeps the records it was started with, unless its settings were explicitly changed
            if not (resume and (self.run_dir / RUN_INFO).exists()) or self._config_changed:
                save_config(config, self.run_dir / "config.yaml")
                write_run_info(self.run_dir, self.run_info())
        self.sinks = (build_sinks(config.logging, self.run_dir, config.name, to_dict(config))
                      if self.dist.is_main else [])

    # ------------------------------------------------------------------------------------------ bookkeeping
    def skipped_images(self) -> list[str]:
        """The unreadable files left out of this run's datasets so far (training, bank and test), each once."""
        sources = {id(d.source): d.source for d in (self.train_set, self.bank_set, self.test_set)}
        return list(dict.fromkeys(path for source in sources.values() for path in getattr(source, "skipped", [])))

    def _record_skipped_images(self) -> None:
        """List the unreadable files in the run directory and say so in one line (when there are any, or more
        than were recorded)."""
        skipped = self.skipped_images()
        listing = self.run_dir / SKIPPED_IMAGES
        known = listing.read_text().splitlines() if listing.exists() else []
        if skipped and set(skipped) - set(known):
            listing.write_text("".join(f"{path}\n" for path in dict.fromkeys(known + skipped)))
            count = len(set(known) | set(skipped))
            logger.warning("skipped %d unreadable image%s (not trained or evaluated on): listed in %s",
                           count, "" if count == 1 else "s", listing)

    def run_info(self) -> RunInfo:
        """The run's identity, every setting that changes its evaluations, and its training budget."""
        cfg = self.config
        data, data_text = evaluation_data(cfg, self.bank_set, self.test_set, self.eval_image_size, self.eval_precision)
        protocol = {"data": data_text, "knn": self.knn_protocol.describe()}
        evaluation: dict[str, dict[str, Any]] = {"data": data, "knn": dataclasses.asdict(self.knn_protocol)}
        if self.no_evaluation is not None:  # nothing is evaluated: say why instead of describing evaluators
            protocol = {"data": f"no evaluation: {self.no_evaluation}"}
            evaluation = {"data": {"none": self.no_evaluation}}
        elif cfg.eval.linear:
            protocol["linear"] = ProbeConfig().describe()
            evaluation["linear"] = dataclasses.asdict(ProbeConfig())
        if self.online_probe is not None and self.no_evaluation is None:
            protocol["online_linear"] = self.online_probe.describe()
            evaluation["online_linear"] = {**self.online_probe.settings(), "reveal_labels": cfg.data.reveal_labels}
        budget = {
            "epochs": cfg.train.epochs, "batch_size": cfg.data.batch_size, "steps_per_epoch": self.steps_per_epoch,
            "train_images": len(self.train_set), "train_subset": cfg.data.train_subset,
            "image_size": cfg.data.image_size, "backbone": cfg.model.backbone, "recipe": cfg.data.recipe,
            "precision": self.precision.label, "world_size": self.dist.world_size,
            "backend": getattr(self.loader, "backend", resolve_backend(cfg, self.train_set, self.device)),
            "init": self.init,
            "skipped_images": len(self.skipped_images()),
        }
        tasks = getattr(self.model, "tasks", [])
        chance = {f"acc/{t.name}": 100.0 / t.num_classes for t in tasks if getattr(t, "num_classes", 0)}
        return RunInfo(name=cfg.name, method=cfg.model.method, dataset=cfg.data.dataset,
                       tasks=[task_label(t) for t in cfg.tasks], seed=cfg.train.seed, epochs=cfg.train.epochs,
                       protocol=protocol, evaluation=evaluation, budget=budget, noise=noise_knobs(cfg.noise),
                       chance=chance, no_evaluation=self.no_evaluation, machine=machine_info(self.device))

    def state(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "backbone": self.model.backbone.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler else None,
            "online_probe": None if self.online_probe is None else {
                "head": self.online_probe.state_dict(), "optimizer": self.online_probe.optimizer.state_dict()},
            "step": self.step, "epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch,
            "images_seen": self.images_seen, "train_time_s": self.clock.elapsed,
            "train_cpu_s": self.clock.cpu_elapsed, "rng": rng_state(self.device), "config": to_dict(self.config),
        }

    def save_checkpoint(self) -> Path | None:
        """Write the full state atomically; weights that are no longer finite are never checkpointed.

        Every process calls it at the same step (it gathers each rank's `process_state` to rank 0, which writes
        one file); the weights are identical on every rank, so every rank reaches the same verdict on them."""
        finite = torch.stack([torch.isfinite(p).all() for p in self.model.parameters()]).all()
        if not bool(finite):
            raise NonFiniteLossError(
                f"weights became non-finite at epoch {self.epoch}, step {self.step}; not checkpointed. "
                f"Last good checkpoint: {find_last_checkpoint(self.run_dir) or 'none yet'}. Lower optim.lr."
            )
        with self.clock.paused():  # checkpointing is not training time (nor is evaluation)
            processes = gather_to_main(process_state(self.model, self.device), self.dist) if self.dist.enabled else None
            if not self.dist.is_main:
                return None
            path = checkpoint_path(self.run_dir, self.step)
            state = self.state()
            if processes is not None:
                state["processes"] = processes
            atomic_save(state, path)
            prune_checkpoints(self.run_dir)
        return path

    def _resume(self, path: Path | None, allow_config_change: bool) -> None:
        requested = to_dict(self.config)
        saved_config = self.run_dir / "config.yaml"
        if saved_config.exists():  # the run's own settings, also when it stopped before its first checkpoint
            saved = to_dict(load_config(saved_config))
            for line in check_same_config(saved, requested, str(self.run_dir), allow_config_change):
                logger.warning("resuming with a changed setting: %s", line)
                self._config_changed = True
        path = path or find_last_checkpoint(self.run_dir)
        if path is None:
            logger.info("no checkpoint in %s: starting from scratch", self.run_dir)
            if self.log is not None:
                self.log.truncate_after(-1)  # records of the interrupted attempt would be duplicated
            return
        state = load_checkpoint(path)
        # (settings added to auxssl after the checkpoint was written take their defaults)
        check_same_config(to_dict(from_dict(RunConfig, state["config"])), requested, str(path), allow_config_change)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scaler is not None and state["scaler"] is not None:
            self.scaler.load_state_dict(state["scaler"])
        if self.online_probe is not None and state["online_probe"] is not None:
            self.online_probe.load_state_dict(state["online_probe"]["head"])
            self.online_probe.optimizer.load_state_dict(state["online_probe"]["optimizer"])
        self.step, self.epoch, self.batch_in_epoch = state["step"], state["epoch"], state["batch_in_epoch"]
        self.images_seen = state["images_seen"]
        self.clock = TrainClock(state["train_time_s"], state.get("train_cpu_s", 0.0))
        set_rng_state(state["rng"], self.device)
        if self.dist.enabled:
            self._restore_own_process_state(state.get("processes"), path)
        if self.log is not None:
            self.log.truncate_after(self.step)
        logger.info("resumed %s at epoch %d, step %d", path, self.epoch, self.step)

    def _restore_own_process_state(self, processes: list[dict[str, Any]] | None, path: Path) -> None:
        """Each rank takes back its own random streams and buffers (not rank 0's, which the model state holds).
        A checkpoint from another number of processes (or from before per-process states were saved) cannot
        give every rank its own: the ranks then draw fresh streams, seeded by rank and step, and say so."""
        if processes is not None and len(processes) == self.dist.world_size:
            restore_process_state(processes[self.dist.rank], self.model, self.device)
            return
        written = "an older auxssl" if processes is None else f"{len(processes)} processes"
        if self.dist.is_main:
            logger.warning("%s was written by %s, not %d: each process restarts its random streams (and keeps rank "
                           "0's buffers, such as SwAV's queue); the run continues but is not the uninterrupted one",
                           path, written, self.dist.world_size)
        seed_everything(derive_seed(process_seed(self.config.train.seed, self.dist.rank, self.dist.world_size),
                                    self.step) % 2**31, False)

    def _initialise_backbone(self, path: Path) -> None:
        """Backbone weights from ``path`` (an exported state_dict or a training checkpoint), copied into every
        momentum (target) network that mirrors the backbone."""
        state = load_checkpoint(path)
        if isinstance(state.get("backbone"), dict):
            state = state["backbone"]
        try:
            self.model.backbone.load_state_dict(state)
        except RuntimeError as err:
            raise InputError(f"--init {path}: the weights do not fit model.backbone={self.config.model.backbone} "
                             f"(width {self.config.model.width}): {str(err).splitlines()[0]}") from err
        for online, target in self.model.momentum_pairs():
            target.load_state_dict(online.state_dict())
        logger.info("initialised the backbone from %s", path)

    # ------------------------------------------------------------------------------------------------ loop
    def train_step(self, batch: Batch) -> dict[str, Tensor]:
        lr = float(self.lr_schedule[self.step])
        for group in self.optimizer.param_groups:
            group["lr"] = self.base_lr if group.get("fixed_lr") else lr
        noise = {} if self.noise is None else self.noise.prepare(batch, self.model, self.step)
        if self.channels_last:
            batch.views = [v.contiguous(memory_format=torch.channels_last) for v in batch.views]
        with self.precision.autocast():
            out = self.forward(batch)
        loss = out["loss"]
        if not torch.isfinite(loss):
            terms = {k: round(float(v), 4) for k, v in out.items()}
            last = find_last_checkpoint(self.run_dir)
            raise NonFiniteLossError(
                f"loss is {float(loss)} at epoch {self.epoch}, step {self.step} (terms {terms}); training stopped "
                f"before the update. Last good checkpoint: {last or 'none yet'}. Lower optim.lr or use fp32."
            )
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.optimizer)
        else:
            loss.backward()
        hook = getattr(self.model, "on_before_optimizer_step", None)
        if hook is not None:
            hook(self.step)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        if self.tau_schedule is not None:
            self.model.momentum_update(float(self.tau_schedule[self.step]))
        if self.online_probe is not None and batch.label is not None and self.features.online_features:
            # the base method's online features of the first view (`OnlineFeatureRecorder`)
            out.update(self.online_probe.update(self.features.online_features[0], batch.label))  # incl. PROBE_LABELLED
        out.update(noise)
        out["lr"] = lr
        return out

    def evaluate(self, final: bool = False) -> dict[str, float]:
        """kNN (and, at the end, the linear probe) on the backbone; the training clock is paused meanwhile."""
        with self.clock.paused():
            linear = ProbeConfig() if final and self.config.eval.linear else None
            return evaluate_backbone(self.model.backbone, self.bank_set, self.test_set, knn=self.knn_protocol,
                                     linear=linear, device=self.device, image_size=self.eval_image_size,
                                     decoded=self._decoded_eval_images(), precision=self.eval_precision,
                                     group=self.eval_group,
                                     num_workers=self.config.data.num_workers)

    def _decoded_eval_images(self) -> tuple | None:
        """The evaluation images decoded once per run when they fit `memory_budget` (much faster than decoding at
        every evaluation); None to stream them (memory bounded by a batch). Under torch.distributed each rank
        decodes and holds only its shards."""
        if self._eval_images is None:
            sets = (self.bank_set, self.test_set)
            if self.eval_group is not None:
                sets = tuple(self.eval_group.shard(d) for d in sets)
            if sum(d.decoded_bytes(self.eval_image_size) for d in sets) > memory_budget(self.config, self.device):
                return None
            self._eval_images = tuple(d.to_uint8(d.storage_size(self.eval_image_size)) for d in sets)
        return self._eval_images

    def _log(self, kind: str, metrics: dict[str, float]) -> None:
        """Every record's ``epoch`` counts completed epochs: fractional for training logs (``step / steps per
        epoch``), whole for the evaluations at epoch ends, so both share one axis."""
        if self.log is None:
            return
        self.log.append(kind, epoch=round(self.step / self.steps_per_epoch, 4), step=self.step,
                        images_seen=self.images_seen, train_time_s=self.clock.elapsed,
                        train_cpu_s=self.clock.cpu_elapsed, **metrics)
        for sink in self.sinks:
            sink.log(kind, metrics, self.step)

    def fit(self) -> dict[str, float]:
        """Train to the configured number of epochs (from the resumed position) and return the final evaluation.

        A finished run is not trained again: its final evaluation is returned. On SIGTERM or SIGUSR1 the state is
        checkpointed at the next step boundary and `Preempted` is raised (the CLI exits with `EXIT_PREEMPTED`).
        """
        cfg = self.config.train
        if self.epoch >= cfg.epochs:
            for sink in self.sinks:
                sink.close()
            return self.final_evaluation()
        guard = PreemptionGuard(self.dist.enabled, self.device)
        progress = self._progress()
        final: dict[str, float] = {}
        window = WindowMeans()
        if self.step == 0 and self.evaluation_enabled and self.config.eval.at_start:
            self._log("eval", self.evaluate())  # the initial weights: epoch 0, before the clock starts
        self.model.train()
        self.clock.start()
        last_log = self.clock.elapsed
        images_at_log = self.images_seen
        try:
            with guard:
                while self.epoch < cfg.epochs:
                    self.loader.set_epoch(self.epoch, self.batch_in_epoch)
                    epoch_hook = getattr(self.model, "on_train_epoch_start", None)
                    if epoch_hook is not None:
                        epoch_hook(self.epoch)
                    for batch in self.loader:
                        out = self.train_step(batch)
                        self.step += 1
                        self.batch_in_epoch += 1
                        self.images_seen += batch.size * self.dist.world_size
                        labelled = out.pop(PROBE_LABELLED, 0)  # a host-side count
                        for key, value in out.items():  # accumulated on the device: read back at log steps only
                            window.add(key, value, labelled if key.startswith("online_linear/") else 1.0)
                        if progress is not None:
                            progress.update(1)
                        if self.step % cfg.log_every_steps == 0 or self.batch_in_epoch == self.steps_per_epoch:
                            now = self.clock.elapsed  # evaluation and checkpointing excluded
                            metrics = window.means()
                            metrics["images_per_s"] = (self.images_seen - images_at_log) / max(now - last_log, 1e-9)
                            self._log("train", metrics)
                            self._watch_collapse(metrics)
                            if progress is not None:
                                progress.set_postfix(loss=f"{metrics['loss']:.3f}",
                                                     img_s=f"{metrics['images_per_s']:.0f}")
                            window.reset()
                            last_log, images_at_log = now, self.images_seen
                        if cfg.checkpoint_every_steps and self.step % cfg.checkpoint_every_steps == 0:
                            self.save_checkpoint()
                        # under torch.distributed, agreeing on a stop is a collective (a host sync): every few steps
                        if (not self.dist.enabled or self.step % PREEMPTION_CHECK_EVERY == 0) and guard.requested():
                            path = self.save_checkpoint()
                            if self.dist.is_main:  # what a job script tests to requeue (torchrun exits 1 itself)
                                (self.run_dir / PREEMPTED).write_text(f"{guard.signal_name}\n{path}\n")
                            raise Preempted(f"stopped by {guard.signal_name} at epoch {self.epoch}, step {self.step}; "
                                            f"checkpoint {path}: continue with the same command and --resume",
                                            guard.signal_name)
                    self.epoch += 1
                    self.batch_in_epoch = 0
                    last = self.epoch == cfg.epochs
                    if self._evaluates_after(self.epoch):  # every process extracts its share of the features
                        final = self.evaluate(final=last)
                        self._log("eval", final)
                        self.model.train()
                        if progress is not None:
                            summary = ", ".join(f"{k} {v:.2f}" for k, v in final.items())
                            progress.write(f"epoch {self.epoch}: {summary}")
                    if last or (cfg.checkpoint_every_epochs and self.epoch % cfg.checkpoint_every_epochs == 0):
                        self.save_checkpoint()
        finally:
            self.clock.stop()
            if self.dist.is_main:
                self._record_skipped_images()  # streaming loaders find undecodable files only as they read them
            if progress is not None:
                progress.close()
            for sink in self.sinks:
                sink.close()
        return final

    def final_evaluation(self) -> dict[str, float]:
        """The metrics of the run's last evaluation record (empty when it has none)."""
        records = read_metrics(self.run_dir, "eval")
        if not records:
            return {}
        bookkeeping = {"kind", "epoch", "step", "images_seen", "train_time_s", "train_cpu_s"}
        return {k: v for k, v in records[-1].items() if k not in bookkeeping}

    def _evaluates_after(self, epoch: int) -> bool:
        """Whether an evaluation follows ``epoch``: every ``eval.every_epochs`` epochs and after the last one;
        ``eval.every_epochs: 0`` never evaluates."""
        every = self.config.eval.every_epochs
        return self.evaluation_enabled and (epoch % every == 0 or epoch == self.config.train.epochs)

    def _watch_collapse(self, metrics: dict[str, float]) -> None:
        value = metrics.get("stat/z_std")
        if value is not None and value < self.config.train.collapse_threshold:
            message = (f"possible representation collapse at epoch {self.epoch}, step {self.step}: normalised "
                       f"embedding std {value:.3f} (1 ≈ healthy, 0 = collapsed)")
            warnings.warn(message, stacklevel=2)
            logger.warning(message)

    def _progress(self) -> Any:
        if not (self.config.train.progress and self.dist.is_main):
            return None
        try:
            from tqdm.auto import tqdm
        except ImportError:
            return None
        return tqdm(total=self.total_steps, initial=self.step, desc=self.config.name, unit="step", dynamic_ncols=True)


def train(config: RunConfig, resume: bool | str | Path = False, init: str | Path | None = None,
          allow_config_change: bool = False) -> dict[str, float]:
    """Train one run (see `Trainer` for the arguments); returns the final evaluation metrics."""
    return Trainer(config, resume=resume, init=init, allow_config_change=allow_config_change).fit()

