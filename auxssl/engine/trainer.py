"""The training loop: explicit and linear, in the spirit of DINO's.

One step: learning rate from the precomputed schedule → autocast forward → finite-loss check → backward (with a
GradScaler for CUDA fp16) → method hook → optimiser step → EMA of the momentum pairs with the precomputed τ.
Evaluations run with the training clock paused; checkpoints hold the full state and are written atomically.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from auxssl.auxiliary import OnlineFeatureRecorder
from auxssl.config import RunConfig, save_config, to_dict
from auxssl.engine.build import (
    RunDatasets,
    build_datasets,
    build_evaluators,
    build_model,
    build_online_probes,
    build_schedules,
    build_train_loader,
    decode_eval_images,
    process_seed,
    seed_everything,
    warn_if_knn_bank_too_small,
)
from auxssl.engine.checkpoint import (
    find_last_checkpoint,
    remove_partial_writes,
)
from auxssl.engine.distributed import (
    DistributedContext,
    convert_batchnorm,
    init_distributed,
    wrap_ddp,
)
from auxssl.engine.loggers import build_sinks, progress_bar
from auxssl.engine.optim import build_optimizer
from auxssl.engine.precision import channels_last_is_safe, resolve_device, resolve_precision
from auxssl.engine.preemption import Preempted, PreemptionGuard
from auxssl.engine.resume import NonFiniteLossError, full_state, initialise_backbone, resume_run, write_checkpoint
from auxssl.engine.run_info import describe_run, record_skipped_images, skipped_images, why_no_evaluation
from auxssl.eval.linear import OnlineLinearProbe
from auxssl.eval.offline import evaluate_backbone
from auxssl.eval.sharded import EvalGroup
from auxssl.eval.tracker import (
    RUN_INFO,
    MetricsLog,
    RunInfo,
    TrainClock,
    WindowMeans,
    last_evaluation,
    warn_if_collapsed,
    write_run_info,
)
from auxssl.noise.control import NoiseControl
from auxssl.wrapper import AuxWrapper
from baselines.protocol import Batch

logger = logging.getLogger("auxssl")

#: The file a pre-empted run leaves in its directory (the signal, the checkpoint), removed when it continues: a job
#: script requeues when it exists (torchrun's own exit status does not tell a pre-emption from a failure).
PREEMPTED = "preempted"

#: Under torch.distributed, pre-emption requests are agreed every this many steps (each agreement syncs the host).
PREEMPTION_CHECK_EVERY = 10

#: The key under which a step reports how many labelled samples its online-probe metrics are averaged over.
PROBE_LABELLED = "online_linear/labelled"


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
        self.total_steps = config.train.epochs * self.steps_per_epoch
        self.lr_schedule, self.tau_schedule = build_schedules(config, self.model, self.base_lr, self.steps_per_epoch)
        self.scaler = torch.amp.GradScaler(self.device.type) if self.precision.needs_scaler else None

        #: the offline evaluators (`auxssl.eval.evaluators`): run.json and the report derive from this list
        self.evaluators = build_evaluators(config, self.model)
        self._eval_images: tuple | None = None
        #: Under torch.distributed each rank evaluates its shards (`auxssl.eval.sharded`).
        self.eval_group = EvalGroup.create(config.eval.wait_timeout_s) if self.dist.enabled else None
        #: Why this run has no evaluation (None when it has one); in run.json and the report.
        self.no_evaluation = why_no_evaluation(config, self.bank_set, self.test_set)
        self.evaluation_enabled = self.no_evaluation is None
        #: probes trained at every step on the base method's online features (`OnlineProbes`)
        self.online_probes = build_online_probes(config, self.model, self.train_set, self.device)
        if self.online_probes.active():  # the wrapper's recorder, or one on a method without tasks
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
            self._config_changed = resume_run(self, None if resume is True else Path(resume),
                                              allow_config_change)
        elif self.dist.is_main and (self.run_dir / "metrics.jsonl").exists():
            raise FileExistsError(
                f"{self.run_dir} already holds a run: pass --resume to continue it or choose another name")
        elif init is not None:
            initialise_backbone(self, Path(init))
        if self.dist.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / PREEMPTED).unlink(missing_ok=True)  # continued now
            self._record_skipped_images()
            remove_partial_writes(self.run_dir)
            if self.evaluation_enabled:
                warn_if_knn_bank_too_small(config, len(self.bank_set))
            # a resumed run keeps the records it was started with, unless its settings were explicitly changed
            if not (resume and (self.run_dir / RUN_INFO).exists()) or self._config_changed:
                save_config(config, self.run_dir / "config.yaml")
                write_run_info(self.run_dir, self.run_info())
        self.sinks = (build_sinks(config.logging, self.run_dir, config.name, to_dict(config))
                      if self.dist.is_main else [])

    # ------------------------------------------------------------------------------------------ bookkeeping
    def skipped_images(self) -> list[str]:
        """The unreadable files left out of this run's datasets so far (training, bank and test), each once."""
        return skipped_images((self.train_set, self.bank_set, self.test_set))

    def _record_skipped_images(self) -> None:
        record_skipped_images(self.run_dir, self.skipped_images())

    def run_info(self) -> RunInfo:
        """The run's identity, every setting that changes its evaluations, and its training budget."""
        return describe_run(self)

    @property
    def online_probe(self) -> OnlineLinearProbe | None:
        """The online linear probe on the backbone features (``eval.online_linear``)."""
        return self.online_probes.linear

    def state(self) -> dict[str, Any]:
        return full_state(self)

    def save_checkpoint(self) -> Path | None:
        """Write the full state atomically (`write_checkpoint`; every process calls it at the same step)."""
        return write_checkpoint(self)

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
            terms = {k: round(float(v.detach() if isinstance(v, Tensor) else v), 4) for k, v in out.items()}
            last = find_last_checkpoint(self.run_dir)
            raise NonFiniteLossError(
                f"loss is {float(loss.detach())} at epoch {self.epoch}, step {self.step} (terms {terms}); training "
                f"stopped before the update. Last good checkpoint: {last or 'none yet'}. Lower optim.lr or use fp32."
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
        if self.online_probes.active() and batch.label is not None and self.features.online_features:
            # the base method's online features of the first view (`OnlineFeatureRecorder`); incl. PROBE_LABELLED
            for probe in self.online_probes.active():
                out.update(probe.update(self.features.online_features[0], batch.label))
        out.update(noise)
        out["lr"] = lr
        return out

    def evaluate(self, final: bool = False) -> dict[str, float]:
        """The evaluators on the backbone (the kNN at every evaluation, probes at the final one); the training
        clock is paused meanwhile."""
        with self.clock.paused():
            evaluators = [e for e in self.evaluators if final or e.every_evaluation]
            return evaluate_backbone(self.model.backbone, self.bank_set, self.test_set, evaluators=evaluators,
                                     device=self.device, image_size=self.eval_image_size,
                                     decoded=self._decoded_eval_images(), precision=self.eval_precision,
                                     group=self.eval_group, num_workers=self.config.data.num_workers)

    def _decoded_eval_images(self) -> tuple | None:
        """The evaluation images decoded once per run when they fit (`decode_eval_images`), else None."""
        if self._eval_images is None:
            self._eval_images = decode_eval_images(self.config, self.bank_set, self.test_set, self.eval_image_size,
                                                   self.device, self.eval_group)
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
        progress = progress_bar(self.config.train.progress and self.dist.is_main, self.total_steps, self.step,
                                self.config.name)
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
                            warn_if_collapsed(metrics, self.config.train.collapse_threshold, self.epoch, self.step)
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
        return last_evaluation(self.run_dir)

    def _evaluates_after(self, epoch: int) -> bool:
        """Whether an evaluation follows ``epoch``: every ``eval.every_epochs`` epochs and after the last one;
        ``eval.every_epochs: 0`` never evaluates."""
        every = self.config.eval.every_epochs
        return self.evaluation_enabled and (epoch % every == 0 or epoch == self.config.train.epochs)



def train(config: RunConfig, resume: bool | str | Path = False, init: str | Path | None = None,
          allow_config_change: bool = False) -> dict[str, float]:
    """Train one run (see `Trainer` for the arguments); returns the final evaluation metrics. Under torchrun the
    process group stays open for the caller, who leaves it (`auxssl.engine.distributed.shutdown_distributed`, as
    the CLI does)."""
    return Trainer(config, resume=resume, init=init, allow_config_change=allow_config_change).fit()

