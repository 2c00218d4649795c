"""Analysis of finished runs, independent of how it is shown: loading and checking that runs are comparable
(evaluation settings, seeds, budgets), grouping them into variants (runs that differ only by seed), final
accuracies, mean curves over seeds and speed-ups with their noise floor. `auxssl.eval.report` renders it.

Definitions (stated in every report):
- final accuracy: the metric at a run's last evaluation; mean ± sample std over the seeds of a variant;
- speed-up of a variant over its baseline (same method and dataset, no auxiliary task; a control training on its
  tasks alone, method ``none``, is paired with every baseline of its dataset): the baseline's full training
  (epochs, and training wall-clock without evaluation) divided by what the variant needed to first reach the
  baseline's mean final accuracy, evaluated per seed of the variant, then mean ± std. A seed that never reaches
  it counts as "not reached" and is left out of the mean; an evaluation of the initial weights never counts;
- noise floor of a speed-up: the same rule applied to the baseline's own seeds against the baseline's mean (the
  largest such "speed-up" of a baseline seed). A speed-up from one seed (of the variant or the baseline), or one
  not above the noise floor, is shown as such, not as a result.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from auxssl.errors import InputError
from auxssl.eval.evaluators import EVALUATORS
from auxssl.eval.tracker import METRICS, RUN_INFO, RunInfo, read_metrics, read_run_info

#: The metric speed-ups and curves are read on by default.
PRIMARY = "knn/top1"


@dataclass
class Run:
    path: Path
    info: RunInfo
    evals: list[dict]
    train: list[dict]

    def final(self, metric: str) -> dict | None:
        """The last evaluation record holding ``metric``."""
        for record in reversed(self.evals):
            if record.get(metric) is not None:
                return record
        return None

    def first_reaching(self, metric: str, target: float) -> dict | None:
        """The first evaluation after training began (never the initial weights' record) at or above ``target``."""
        for record in self.evals:
            if record["step"] == 0:
                continue
            value = record.get(metric)
            if value is not None and value >= target:
                return record
        return None


def find_run_dirs(paths: Sequence[str | Path]) -> list[Path]:
    """Run directories among ``paths``: each path is a run directory or a folder holding run directories."""
    found: list[Path] = []
    for path in map(Path, paths):
        if (path / RUN_INFO).is_file():
            found.append(path)
            continue
        children = sorted(p.parent for p in path.rglob(RUN_INFO)) if path.is_dir() else []
        if not children:
            raise FileNotFoundError(f"{path} holds no run directory ({RUN_INFO} + {METRICS})")
        found += children
    return found


#: Metric-name prefix of each evaluator named in ``run.json``'s ``evaluation`` (`auxssl.eval.evaluators`); ``"data"``
#: applies to all of them.
EVALUATOR_PREFIXES = {name: cls.prefix for name, cls in EVALUATORS.items()}


def evaluation_settings(info: RunInfo) -> dict[str, Any]:
    """A run's evaluation settings by evaluator; runs written before they were recorded fall back to their
    protocol descriptions."""
    if info.evaluation:
        return info.evaluation
    return {key.lower(): {"description": text} for key, text in info.protocol.items()}


def _differences(runs: Sequence[Run], key: str) -> str:
    """The fields of evaluation settings ``key`` on which the runs differ. A field only some runs record (one
    added to ``run.json`` after the others were written, e.g. ``data.split``) is compared among those that do."""
    settings = [evaluation_settings(r.info).get(key, {}) for r in runs]
    fields = sorted({f for s in settings for f in s})
    lines = []
    for f in fields:
        recorded = [(r, s[f]) for r, s in zip(runs, settings) if f in s]
        if any(v != recorded[0][1] for _, v in recorded):
            lines.append(f"{key}.{f}: " + ", ".join(f"{r.path.name}={v!r}" for r, v in recorded))
    return "; ".join(lines)


def shared_evaluators(runs: Sequence[Run]) -> list[str]:
    """The evaluators every run has, after checking that the runs can be compared on them.

    Raises InputError naming each differing setting when the runs' evaluation data (dataset, image size, kNN
    bank, test set) or the settings of a shared evaluator differ. An evaluator only some runs have (say a final
    linear probe) is left out of the comparison, not a reason to refuse it.
    """
    shared = set.intersection(*(set(evaluation_settings(r.info)) for r in runs))
    for key in sorted(shared | {"data"}):
        diff = _differences(runs, key)
        if diff:
            raise InputError(f"runs were evaluated differently and cannot be compared ({diff})")
    return sorted(shared - {"data"})


def check_distinct_seeds(runs: Sequence[Run]) -> None:
    """Two runs of one variant with the same seed are not two seeds: refuse to average them as such."""
    seen: dict[tuple, Run] = {}
    for run in runs:
        key = (run.info.method, run.info.dataset, tuple(run.info.tasks), run.info.noise_key, run.info.seed)
        if key in seen:
            raise InputError(
                f"{seen[key].path} and {run.path} are both seed {run.info.seed} of {run.info.variant}: averaging "
                "them as two seeds would understate the spread; give each run its own train.seed or report them "
                "separately"
            )
        seen[key] = run


def load_runs(paths: Sequence[str | Path]) -> list[Run]:
    """The runs under ``paths``, checked to be comparable (see `shared_evaluators`, `check_distinct_seeds`)."""
    runs = []
    for path in find_run_dirs(paths):
        runs.append(Run(path, read_run_info(path), read_metrics(path, "eval"), read_metrics(path, "train")))
    shared_evaluators(runs)
    check_distinct_seeds(runs)
    return runs


def budget_differences(runs: Sequence[Run]) -> list[str]:
    """Training-budget settings that differ between runs, one line each (empty when they all agree)."""
    fields = sorted({f for r in runs for f in r.info.budget})
    lines = []
    for f in fields:
        values = [r.info.budget.get(f) for r in runs]
        if any(v != values[0] for v in values):
            lines.append(f"{f}: " + ", ".join(f"{r.path.name}={show(v)}" for r, v in zip(runs, values)))
    return lines


def show(value: Any) -> str:
    """A setting as a reader should see it: ``none`` for None, plain text otherwise."""
    return "none" if value is None else str(value)


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    if not values:
        return math.nan, math.nan
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


@dataclass
class Variant:
    name: str
    method: str
    dataset: str
    tasks: tuple[str, ...]
    runs: list[Run]
    noise_key: tuple = ()

    @property
    def seeds(self) -> list[int]:
        return sorted(r.info.seed for r in self.runs)

    def final(self, metric: str) -> tuple[float, float, int]:
        values = [rec[metric] for r in self.runs if (rec := r.final(metric)) is not None]
        return (*mean_std(values), len(values))

    def final_field(self, metric: str, field: str) -> tuple[float, float, int]:
        values = [rec[field] for r in self.runs if (rec := r.final(metric)) is not None]
        return (*mean_std(values), len(values))

    def training_mean(self, metric: str) -> tuple[float, float, int]:
        """``metric`` averaged over each run's training records, then mean ± std over the runs."""
        values = [statistics.fmean(v) for r in self.runs if (v := [rec[metric] for rec in r.train if metric in rec])]
        return (*mean_std(values), len(values))


def group_variants(runs: Sequence[Run]) -> list[Variant]:
    groups: dict[tuple[str, str, tuple[str, ...], tuple], list[Run]] = defaultdict(list)
    for run in runs:
        groups[(run.info.method, run.info.dataset, tuple(run.info.tasks), run.info.noise_key)].append(run)
    several_datasets = len({r.info.dataset for r in runs}) > 1
    return [
        Variant(rs[0].info.variant + (f" ({d})" if several_datasets else ""), m, d, t, rs, n)
        for (m, d, t, n), rs in sorted(groups.items())
    ]


@dataclass
class SpeedUp:
    variant: Variant
    baseline: Variant
    metric: str
    target: float
    baseline_epochs: float
    baseline_time: float
    epochs_needed: list[float]
    time_needed: list[float]
    reached: int
    #: The largest speed-up (epochs, wall-clock) a baseline seed shows against the baseline's own mean; None
    #: when the baseline has a single seed.
    noise_floor: tuple[float, float] | None = None

    def epochs_speedup(self) -> tuple[float, float]:
        return mean_std([self.baseline_epochs / e for e in self.epochs_needed if e > 0])

    def time_speedup(self) -> tuple[float, float]:
        return mean_std([self.baseline_time / t for t in self.time_needed if t > 0])

    def verdict(self) -> str:
        """Whether the epoch speed-up is a result: two or more seeds on both sides, above the noise floor."""
        if not self.reached:
            return "not reached"
        if len(self.variant.runs) < 2 or len(self.baseline.runs) < 2:
            return "n = 1: not a result"
        assert self.noise_floor is not None
        if self.epochs_speedup()[0] <= self.noise_floor[0]:
            return f"within the noise floor ({self.noise_floor[0]:.2f}×)"
        return f"above the noise floor ({self.noise_floor[0]:.2f}×)"


#: The null base method (`baselines.NoBaseLoss`): its runs train on their tasks alone, a control.
CONTROL_METHOD = "none"


def speedups(variants: Sequence[Variant], metric: str = PRIMARY) -> list[SpeedUp]:
    """Pair every variant with auxiliary tasks with its baseline and measure time to the baseline's accuracy.

    The baseline is the same method without tasks; a control (tasks alone, method ``none``, the paper's table 4)
    is paired with every baseline of its dataset: does the task alone reach what the base method reaches?
    """
    baselines = [v for v in variants if not v.tasks]
    out = []
    for variant in variants:
        if not variant.tasks:
            continue
        for baseline in baselines:
            if (baseline.dataset, baseline.noise_key) == (variant.dataset, variant.noise_key) and (
                    baseline.method == variant.method or variant.method == CONTROL_METHOD):
                if (found := _speedup(variant, baseline, metric)) is not None:
                    out.append(found)
    return out


def _speedup(variant: Variant, baseline: Variant, metric: str) -> SpeedUp | None:
    """The speed-up of ``variant`` over ``baseline``; None when the baseline has no final ``metric``."""
    target, _, n = baseline.final(metric)
    if n == 0:
        return None
    base_epochs, _, _ = baseline.final_field(metric, "epoch")
    base_time, _, _ = baseline.final_field(metric, "train_time_s")
    hits = [rec for r in variant.runs if (rec := r.first_reaching(metric, target)) is not None]
    floor = None
    if len(baseline.runs) > 1:
        own = [rec for r in baseline.runs if (rec := r.first_reaching(metric, target)) is not None]
        floor = (max([base_epochs / rec["epoch"] for rec in own], default=1.0),
                 max([base_time / rec["train_time_s"] for rec in own if rec["train_time_s"] > 0], default=1.0))
    return SpeedUp(variant, baseline, metric, target, base_epochs, base_time,
                   [h["epoch"] for h in hits], [h["train_time_s"] for h in hits], len(hits), floor)


def curves(variant: Variant, metric: str, x_field: str, records: str = "evals",
            scale: float = 1.0) -> tuple[list[float], list[float], list[float]]:
    """Mean x, mean y and std y (``metric`` times ``scale``) over seeds at every epoch all seeds logged ``metric``.

    A run without auxiliary tasks has no ``loss/base``: its ``loss`` is its base loss.
    """
    if metric == "loss/base" and not variant.tasks:
        metric = "loss"
    per_epoch: dict[float, list[tuple[float, float]]] = defaultdict(list)
    for run in variant.runs:
        by_epoch: dict[float, list[tuple[float, float]]] = defaultdict(list)
        for rec in getattr(run, records):
            if rec.get(metric) is not None:
                by_epoch[rec["epoch"]].append((rec[x_field], scale * rec[metric]))
        for epoch, points in by_epoch.items():  # average the records of one epoch (training logs several)
            per_epoch[epoch].append((statistics.fmean(p[0] for p in points), statistics.fmean(p[1] for p in points)))
    xs, ys, sds = [], [], []
    for epoch in sorted(per_epoch):
        points = per_epoch[epoch]
        if len(points) == len(variant.runs):
            xs.append(statistics.fmean(p[0] for p in points))
            mean, std = mean_std([p[1] for p in points])
            ys.append(mean)
            sds.append(std)
    return xs, ys, sds
