"""The run directory's record of convergence: who the run is (``run.json``) and what it measured when
(``metrics.jsonl``, one JSON object per line, appended and flushed as training goes).

Every record carries ``kind`` (``"train"`` or ``"eval"``), ``epoch``, ``step``, ``images_seen`` and
``train_time_s`` — training wall-clock seconds with evaluation time excluded — and, from the engine,
``train_cpu_s`` (the process's CPU seconds over the same spans, see `TrainClock`), plus the metrics by name
(``knn/top1``, ``linear/top1``, ``loss``, ``loss/rotation``, ``acc/rotation``, …).
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import MISSING, asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from auxssl.errors import InputError

RUN_INFO = "run.json"
METRICS = "metrics.jsonl"


@dataclass
class RunInfo:
    """What a report needs to know about a run: its identity, how it was evaluated and its training budget.

    Attributes:
        protocol: a readable description of each evaluator, by evaluator name (``knn``, ``linear``, …).
        evaluation: every setting that changes an evaluation's numbers: ``"data"`` (dataset, evaluation image
            size, kNN bank and its size, test subset and its size) and one entry per evaluator (its
            hyper-parameters), by the same names as ``protocol``. Two runs' numbers are comparable only where
            these agree.
        budget: the training budget (epochs, batch size, training images, image size, backbone, …).
        noise: the noise-control knobs that differ from their defaults (``{}``: the natural objective); runs with
            different knobs are different variants.
        chance: the chance level (%) of each auxiliary-task accuracy the run logs (``acc/rotation``: 25).
        no_evaluation: why the run has no evaluation (unlabelled data, ``eval.every_epochs: 0``); None otherwise.
        machine: where it ran (processor, native bf16, torch, threads, GPU): wall-clock is comparable only
            between runs of one machine.
    """

    name: str
    method: str
    dataset: str
    tasks: list[str] = field(default_factory=list)
    seed: int = 0
    epochs: int = 0
    protocol: dict[str, str] = field(default_factory=dict)
    evaluation: dict[str, dict[str, Any]] = field(default_factory=dict)
    budget: dict[str, Any] = field(default_factory=dict)
    noise: dict[str, Any] = field(default_factory=dict)
    chance: dict[str, float] = field(default_factory=dict)
    no_evaluation: str | None = None
    machine: dict[str, Any] = field(default_factory=dict)

    @property
    def variant(self) -> str:
        """``method`` or ``method+task+…``, then any noise knobs in brackets: runs of one variant differ only by
        seed."""
        knobs = ", ".join(f"{k}={v}" for k, v in sorted(self.noise.items()))
        return "+".join([self.method, *self.tasks]) + (f" [{knobs}]" if knobs else "")

    @property
    def noise_key(self) -> tuple:
        return tuple(sorted((k, repr(v)) for k, v in self.noise.items()))


def write_run_info(run_dir: str | Path, info: RunInfo) -> None:
    path = Path(run_dir) / RUN_INFO
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(asdict(info), indent=2))
    os.replace(tmp, path)


def read_run_info(run_dir: str | Path) -> RunInfo:
    path = Path(run_dir) / RUN_INFO
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir} is not a run directory: {RUN_INFO} is missing")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise InputError(f"{path}: not JSON ({err}); was it written by auxssl?") from None
    if not isinstance(data, dict):
        raise InputError(f"{path}: not a run description (a JSON object) written by auxssl")
    unknown = set(data) - set(RunInfo.__dataclass_fields__)
    if unknown:
        raise InputError(f"{path}: unknown keys {sorted(unknown)} (written by a newer auxssl?)")
    missing = [name for name, f in RunInfo.__dataclass_fields__.items()
               if f.default is MISSING and f.default_factory is MISSING and name not in data]
    if missing:
        raise InputError(f"{path}: missing {missing}: not a run description written by auxssl")
    return RunInfo(**data)


class MetricsLog:
    """Append-only JSON-lines log of a run's records; each line is flushed and fsynced when written."""

    def __init__(self, run_dir: str | Path) -> None:
        self.path = Path(run_dir) / METRICS
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def append(self, kind: str, *, epoch: float, step: int, images_seen: int, train_time_s: float,
               train_cpu_s: float | None = None, **metrics: Any) -> dict:
        record = {"kind": kind, "epoch": int(epoch) if float(epoch).is_integer() else epoch, "step": step,
                  "images_seen": images_seen, "train_time_s": round(train_time_s, 3)}
        if train_cpu_s is not None:
            record["train_cpu_s"] = round(train_cpu_s, 3)
        for name, value in metrics.items():
            value = float(value)
            record[name] = value if math.isfinite(value) else None
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())
        return record

    def truncate_after(self, step: int) -> None:
        """Drop records logged after ``step`` (when resuming from a checkpoint taken at ``step``)."""
        kept = [r for r in read_metrics(self.path.parent) if r["step"] <= step]
        tmp = self.path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))
        os.replace(tmp, self.path)


def read_metrics(run_dir: str | Path, kind: str | None = None) -> list[dict]:
    """The records of a run (optionally of one kind), in the order they were written; a torn last line is
    ignored."""
    path = Path(run_dir) / METRICS
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if kind is None or record.get("kind") == kind:
            records.append(record)
    return records


class WindowMeans:
    """Means of per-step metrics over one logging window, accumulated where the values are (a GPU's tensors stay
    on the GPU: adding a step reads nothing back to the host; `means` does, once per window).

    Each value may carry a weight: the online probe's metrics are weighted by the number of labelled samples of
    their step, so they are means over labelled samples and steps without labels do not count. Non-finite values
    (a rate with no pair to count) are left out of their mean.
    """

    def __init__(self) -> None:
        self._sums: dict[str, Tensor | float] = {}
        self._weights: dict[str, Tensor | float] = {}

    def add(self, name: str, value: Tensor | float, weight: float = 1.0) -> None:
        if weight <= 0:
            return
        if isinstance(value, Tensor):
            value = value.detach().double()
            valid = torch.isfinite(value)
            self._sums[name] = self._sums.get(name, 0.0) + torch.where(valid, value, 0.0) * weight
            self._weights[name] = self._weights.get(name, 0.0) + valid.double() * weight
        else:
            self._sums[name] = self._sums.get(name, 0.0) + weight * value
            self._weights[name] = self._weights.get(name, 0.0) + weight

    def means(self) -> dict[str, float]:
        means = {}
        for name, total in self._sums.items():
            weight = float(self._weights[name])
            if weight > 0:
                means[name] = float(total) / weight
        return means

    def reset(self) -> None:
        self._sums.clear()
        self._weights.clear()


class TrainClock:
    """Training wall-clock, and the process's CPU time over the same spans, excluding evaluation: wrap
    evaluations in ``with clock.paused():``.

    The CPU time (`cpu_elapsed`, every thread of the process) is what a run cost even when other work shared the
    machine and stretched its wall-clock; with one thread per run it equals the wall-clock of an undisturbed run.
    """

    def __init__(self, elapsed: float = 0.0, cpu_elapsed: float = 0.0) -> None:
        self._elapsed, self._cpu_elapsed = elapsed, cpu_elapsed
        self._started: tuple[float, float] | None = None

    def start(self) -> None:
        if self._started is None:
            self._started = (time.perf_counter(), time.process_time())

    def stop(self) -> None:
        if self._started is not None:
            self._elapsed, self._cpu_elapsed = self._now()
            self._started = None

    def _now(self) -> tuple[float, float]:
        if self._started is None:
            return self._elapsed, self._cpu_elapsed
        wall, cpu = self._started
        return self._elapsed + time.perf_counter() - wall, self._cpu_elapsed + time.process_time() - cpu

    @property
    def elapsed(self) -> float:
        return self._now()[0]

    @property
    def cpu_elapsed(self) -> float:
        return self._now()[1]

    @contextmanager
    def paused(self) -> Iterator[None]:
        was_running = self._started is not None
        self.stop()
        try:
            yield
        finally:
            if was_running:
                self.start()


#: The bookkeeping fields of every metrics record (not metrics).
BOOKKEEPING = ("kind", "epoch", "step", "images_seen", "train_time_s", "train_cpu_s")


def last_evaluation(run_dir: str | Path) -> dict[str, float]:
    """The metrics of a run's last evaluation record (empty when it has none)."""
    records = read_metrics(run_dir, "eval")
    return {k: v for k, v in records[-1].items() if k not in BOOKKEEPING} if records else {}


def warn_if_collapsed(metrics: dict[str, float], threshold: float, epoch: int, step: int) -> None:
    """Warn (and log) when the normalised embedding std (``stat/z_std``) falls below ``threshold``."""
    value = metrics.get("stat/z_std")
    if value is not None and value < threshold:
        message = (f"possible representation collapse at epoch {epoch}, step {step}: normalised embedding std "
                   f"{value:.3f} (1 ≈ healthy, 0 = collapsed)")
        warnings.warn(message, stacklevel=3)
        logging.getLogger("auxssl").warning(message)
