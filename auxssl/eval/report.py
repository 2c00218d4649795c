"""Convergence reports: Markdown and self-contained HTML comparing runs, with matplotlib plots.

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

import base64
import html
import math
import statistics
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from auxssl.errors import InputError
from auxssl.eval.tracker import METRICS, RUN_INFO, RunInfo, read_metrics, read_run_info

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


#: Metric-name prefix of each evaluator named in ``run.json``'s ``evaluation``; ``"data"`` applies to all of them.
EVALUATOR_PREFIXES = {"knn": "knn/", "linear": "linear/", "mlp": "mlp/", "online_linear": "online_linear/",
                      "projector_layers": "linear/layer"}


def evaluation_settings(info: RunInfo) -> dict[str, Any]:
    """A run's evaluation settings by evaluator; runs written before they were recorded fall back to their
    protocol descriptions."""
    if info.evaluation:
        return info.evaluation
    return {key.lower(): {"description": text} for key, text in info.protocol.items()}


def _differences(runs: Sequence[Run], key: str) -> str:
    settings = [evaluation_settings(r.info).get(key, {}) for r in runs]
    fields = sorted({f for s in settings for f in s})
    lines = []
    for f in fields:
        values = [s.get(f) for s in settings]
        if any(v != values[0] for v in values):
            lines.append(f"{key}.{f}: " + ", ".join(f"{r.path.name}={v!r}" for r, v in zip(runs, values)))
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


def plural(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    if not values:
        return math.nan, math.nan
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def fmt(mean: float, std: float, n: int, digits: int = 2, unit: str = "") -> str:
    if math.isnan(mean):
        return "—"
    return f"{mean:.{digits}f}{unit}" if n <= 1 else f"{mean:.{digits}f} ± {std:.{digits}f}{unit}"


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


# ------------------------------------------------------------------------------------------------- plots
def _curves(variant: Variant, metric: str, x_field: str, records: str = "evals",
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


def _plot(variants: Sequence[Variant], metrics: Sequence[str], x_field: str, xlabel: str, ylabel: str, title: str,
          path: Path, records: str = "evals", targets: dict[str, float] | None = None, scale: float = 1.0,
          levels: dict[str, dict[str, float]] | None = None) -> Path | None:
    """One panel per metric, one line per variant (mean over seeds, ±std band); baselines dashed.

    ``targets``: labelled horizontal lines on every panel; ``levels``: labelled lines of one metric's panel (a
    chance level); ``scale`` multiplies the metric (fractions to %)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = [m for m in metrics if any(_curves(v, m, x_field, records)[0] for v in variants)]
    if not metrics:
        return None
    width = min(15.0, 4.2 + 3.6 * len(metrics))
    fig, axes = plt.subplots(1, len(metrics), figsize=(width, 4.3), dpi=110, squeeze=False)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, metric in zip(axes[0], metrics):
        for i, variant in enumerate(variants):
            xs, ys, sds = _curves(variant, metric, x_field, records, scale)
            if not xs:
                continue
            colour = colours[i % len(colours)]
            ax.plot(xs, ys, "-" if variant.tasks else "--", color=colour, label=variant.name, linewidth=1.8,
                    marker="o" if len(xs) < 25 else None, markersize=3)
            if any(sd > 0 for sd in sds):
                ax.fill_between(xs, [y - d for y, d in zip(ys, sds)], [y + d for y, d in zip(ys, sds)],
                                color=colour, alpha=0.15)
        for name, value in {**(targets or {}), **(levels or {}).get(metric, {})}.items():
            ax.axhline(value, color="grey", linestyle=":", linewidth=1)
            ax.annotate(f"{name} {value:.1f}", (0.01, value), xycoords=("axes fraction", "data"), fontsize=7,
                        color="grey", va="bottom")
        ax.set(xlabel=xlabel, ylabel=ylabel if len(metrics) == 1 else metric,
               title=title if len(metrics) == 1 else metric)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, frameon=False)
    if len(metrics) > 1:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


# ------------------------------------------------------------------------------------------------ report
@dataclass
class Report:
    markdown: Path
    html: Path
    plots: list[Path]


NOISE_METRICS = ("noise/fn_rate_raw", "noise/fn_rate", "noise/fp_rate")


def _noise_plot(variants: Sequence[Variant], metrics: Sequence[str], path: Path) -> Path | None:
    """Final kNN top-1 against each measured noise rate (one point per variant, ±std over seeds)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(metrics), figsize=(4.6 * len(metrics), 3.8), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        for i, v in enumerate(variants):
            x, x_sd, nx = v.training_mean(metric)
            y, y_sd, ny = v.final(PRIMARY)
            if nx and ny:
                ax.errorbar(x, y, xerr=x_sd, yerr=y_sd, fmt="o" if v.tasks else "s", color=f"C{i % 10}",
                            label=v.name, capsize=3)
        ax.set_xlabel(f"{metric} (mean over training)")
        ax.set_ylabel("final kNN top-1 (%)")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.suptitle("Accuracy against the measured noise")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> tuple[str, str]:
    md = "| " + " | ".join(header) + " |\n| " + " | ".join("---" for _ in header) + " |\n"
    md += "".join("| " + " | ".join(row) + " |\n" for row in rows)
    th = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    trs = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    return md, f"<table><thead><tr>{th}</tr></thead><tbody>{trs}</tbody></table>"


def write_report(paths: Sequence[str | Path], out_dir: str | Path, title: str = "auxssl convergence report") -> Report:
    """Write ``report.md``, ``report.html`` (plots embedded) and the plot PNGs for the given runs."""
    runs = load_runs(paths)
    evaluators = shared_evaluators(runs)
    variants = group_variants(runs)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    protocol = {k: v for k, v in runs[0].info.protocol.items() if k.lower() in {"data", *evaluators}}
    left_out = sorted({k for r in runs for k in evaluation_settings(r.info)} - {"data", *evaluators})
    generated = f"Generated {datetime.now(timezone.utc):%Y-%m-%d %H:%M UTC} from {plural(len(runs), 'run')}."
    md_parts = [f"# {title}\n", f"{generated}\n"]
    html_parts = [f"<h1>{html.escape(title)}</h1>", f"<p class=meta>{html.escape(generated)}</p>"]

    def section(heading: str, text_md: str, text_html: str) -> None:
        md_parts.append(f"\n## {heading}\n\n{text_md}\n")
        html_parts.append(f"<h2>{html.escape(heading)}</h2>{text_html}")

    items = [f"**{k}**: {v}" for k, v in protocol.items()] + [
        "**final accuracy**: at each run's last evaluation; mean ± sample std over seeds",
        "**speed-up**: the baseline's full training (epochs; wall-clock without evaluation) ÷ what the run needed to "
        "first reach the baseline's mean final kNN top-1, per seed, then mean ± std",
    ]
    if left_out:
        items.append(f"**not compared**: {', '.join(left_out)} (not measured in every run)")
    budgets = budget_differences(runs)
    if budgets:
        items.append("**training budgets differ**: " + "; ".join(budgets))
    elif runs[0].info.budget:
        budget = ", ".join(f"{k} {show(v)}" for k, v in runs[0].info.budget.items())
        items.append(f"**training budget** (every run): {budget}")
    machines = {r.path.name: r.info.machine.get("cpu", "not recorded") for r in runs}
    if len(set(machines.values())) > 1:
        items.append("**machines differ** (wall-clock compares only runs of one machine): "
                     + "; ".join(f"{cpu}: {', '.join(n for n, c in machines.items() if c == cpu)}"
                                 for cpu in sorted(set(machines.values()))))
    elif runs[0].info.machine:
        machine = runs[0].info.machine
        items.append(f"**machine** (every run): {machine.get('cpu')}, native bf16 {machine.get('native_bf16')}, "
                     f"torch {machine.get('torch')}")
    unevaluated = [r for r in runs if r.info.no_evaluation]
    if unevaluated:
        items.append("**no evaluation**: " + "; ".join(f"{r.path.name}: {r.info.no_evaluation}" for r in unevaluated))
    section("Protocol", "".join(f"- {i}\n" for i in items),
            "<ul>" + "".join(f"<li>{html.escape(i).replace('**', '')}</li>" for i in items) + "</ul>")

    prefixes = tuple(EVALUATOR_PREFIXES[e] for e in evaluators if e in EVALUATOR_PREFIXES)
    layers = sorted({k for r in runs for rec in r.evals for k in rec if k.startswith("linear/layer")
                     and k.endswith("/top1")}, key=lambda k: int(k.split("/")[1].removeprefix("layer")))
    metrics = [m for m in ("knn/top1", "knn/top5", "linear/top1", "mlp/top1", *layers)
               if m.startswith(prefixes) and any(v.final(m)[2] for v in variants)]
    if metrics:
        rows = []
        for v in variants:
            epochs = v.final_field(PRIMARY, "epoch")
            row = [v.name, v.dataset, f"{len(v.runs)} ({', '.join(map(str, v.seeds))})", fmt(*epochs, digits=0)]
            row += [fmt(*v.final(m)) for m in metrics]
            rows.append(row)
        md, tab = _table(["variant", "dataset", "n (seeds)", "epochs", *metrics], rows)
        section("Final accuracy (%)", md, tab)

    epochs = sorted({rec["epoch"] for r in runs for rec in r.evals if rec.get(PRIMARY) is not None})
    if 1 < len(epochs) <= 25:
        rows = []
        for v in variants:
            row = [v.name]
            for epoch in epochs:
                values = [rec[PRIMARY] for r in v.runs for rec in r.evals
                          if rec["epoch"] == epoch and rec.get(PRIMARY) is not None]
                row.append(fmt(*mean_std(values), len(values), 1) if len(values) == len(v.runs) else "—")
            rows.append(row)
        md, tab = _table(["variant", *(f"ep {e:g}" for e in epochs)], rows)
        section("kNN top-1 (%) at every evaluated epoch (mean ± std over seeds)", md, tab)

    ups = speedups(variants)
    if ups:
        rows = []
        for s in ups:
            e_mean, e_std = mean_std(s.epochs_needed)
            t_mean, t_std = mean_std(s.time_needed)
            n = len(s.variant.runs)
            rows.append([
                s.variant.name, s.baseline.name, f"{s.target:.2f}",
                f"{s.baseline_epochs:.0f} ep / {s.baseline_time:.0f} s",
                fmt(e_mean, e_std, s.reached, 1) + " ep" if s.reached else "not reached",
                fmt(*s.epochs_speedup(), s.reached, 2, "×") if s.reached else "—",
                fmt(t_mean, t_std, s.reached, 0) + " s" if s.reached else "not reached",
                fmt(*s.time_speedup(), s.reached, 2, "×") if s.reached else "—",
                f"{s.reached}/{n}",
                "—" if s.noise_floor is None else f"{s.noise_floor[0]:.2f}× / {s.noise_floor[1]:.2f}×",
                s.verdict(),
            ])
        md, tab = _table(["run", "baseline", "baseline final kNN top-1", "baseline training", "epochs to reach",
                          "speed-up (epochs)", "time to reach", "speed-up (wall-clock)", "seeds reaching",
                          "noise floor (epochs / wall-clock)", "verdict"], rows)
        section("Time to the baseline's accuracy", md, tab)

    noise_metrics = [m for m in NOISE_METRICS if any(v.training_mean(m)[2] for v in variants)]
    noise_plot = None
    if noise_metrics:
        rows = [[v.name, *(fmt(*v.training_mean(m), 4) for m in noise_metrics), fmt(*v.final(PRIMARY))]
                for v in variants]
        md, tab = _table(["variant", *(f"{m} (mean over training)" for m in noise_metrics), "final kNN top-1"], rows)
        meanings = {
            "noise/fn_rate_raw": "fn_rate_raw = share of negative pairs of one true class (from the true labels, which "
                                 "the loss never sees; only labels revealed for false-negative elimination reach it)",
            "noise/fn_rate": "fn_rate = the same among the negatives the loss uses",
            "noise/fp_rate": "fp_rate = share of positive pairs injected or failing the good-crop criterion (from the "
                             "crop boxes)",
        }
        note = "Measured during training: " + "; ".join(meanings[m] for m in noise_metrics) + "."
        section("Measured noise and accuracy", f"{note}\n\n{md}", f"<p>{html.escape(note)}</p>{tab}")
        if any(v.noise_key for v in variants) and any(v.final(PRIMARY)[2] for v in variants):
            noise_plot = _noise_plot(variants, noise_metrics, out / "knn_vs_noise.png")

    targets = {f"{v.name} final": v.final(PRIMARY)[0] for v in variants if not v.tasks and v.final(PRIMARY)[2]}
    plots = [
        _plot(variants, [PRIMARY], "epoch", "epoch", "kNN top-1 (%)", "kNN accuracy vs epoch", out / "knn_vs_epoch.png",
              targets=targets),
        _plot(variants, [PRIMARY], "train_time_s", "training wall-clock (s, evaluation excluded)", "kNN top-1 (%)",
              "kNN accuracy vs wall-clock", out / "knn_vs_time.png", targets=targets),
    ]
    train_keys = sorted({k for r in runs for rec in r.train for k in rec if k == "loss" or k.startswith("loss/")})
    plots.append(_plot(variants, train_keys, "epoch", "epoch", "loss", "Training loss terms", out / "losses.png",
                       "train"))
    acc_keys = sorted({k for r in runs for rec in r.train for k in rec if k.startswith("acc/")})
    if acc_keys:
        chance = {k: {"chance": level} for r in runs for k, level in r.info.chance.items()}
        plots.append(_plot([v for v in variants if v.tasks], acc_keys, "epoch", "epoch", "accuracy (%)",
                           "Auxiliary-task accuracy", out / "aux_accuracy.png", "train", scale=100.0, levels=chance))
    plots.append(noise_plot)  # last: the least read
    plots = [p for p in plots if p is not None]
    md_imgs = "".join(f"![{p.stem}]({p.name})\n\n" for p in plots)
    html_imgs = "".join(
        f'<figure><img alt="{p.stem}" src="data:image/png;base64,{base64.b64encode(p.read_bytes()).decode()}"></figure>'
        for p in plots
    )
    section("Plots", md_imgs, html_imgs)
    md_rows = [[r.path.name, r.info.variant, str(r.info.seed), str(len(r.evals)), str(r.path)] for r in runs]
    md, tab = _table(["run", "variant", "seed", "evaluations", "directory"], md_rows)
    section("Runs", md, tab)

    markdown = out / "report.md"
    markdown.write_text("".join(md_parts))
    page = out / "report.html"
    page.write_text(_HTML.format(title=html.escape(title), body="\n".join(html_parts)))
    return Report(markdown, page, plots)


_HTML = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; max-width: 1040px; margin: 2em auto;
       padding: 0 1.2em; color: #1f2328; line-height: 1.5; }}
h1 {{ border-bottom: 2px solid #d0d7de; padding-bottom: .3em; }}
h2 {{ margin-top: 1.8em; border-bottom: 1px solid #d0d7de; padding-bottom: .2em; }}
.meta {{ color: #57606a; }}
table {{ border-collapse: collapse; margin: .8em 0; font-size: .92em; }}
th, td {{ border: 1px solid #d0d7de; padding: .35em .7em; text-align: left; }}
th {{ background: #f6f8fa; }}
tbody tr:nth-child(even) {{ background: #fafbfc; }}
figure {{ margin: 1em 0; }} img {{ max-width: 100%; border: 1px solid #eaeef2; }}
</style></head><body>
{body}
</body></html>
"""
