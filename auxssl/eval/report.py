"""Convergence reports: Markdown and self-contained HTML comparing runs, with matplotlib plots — the rendering of
`auxssl.eval.analysis` (which defines final accuracy, speed-up and noise floor; every report states them).
"""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from auxssl.eval.analysis import (  # noqa: F401  (re-exported: the report's names before the split)
    CONTROL_METHOD,
    EVALUATOR_PREFIXES,
    PRIMARY,
    Run,
    SpeedUp,
    Variant,
    budget_differences,
    check_distinct_seeds,
    curves,
    evaluation_settings,
    find_run_dirs,
    group_variants,
    load_runs,
    mean_std,
    shared_evaluators,
    show,
    speedups,
)


def plural(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def fmt(mean: float, std: float, n: int, digits: int = 2, unit: str = "") -> str:
    if math.isnan(mean):
        return "—"
    return f"{mean:.{digits}f}{unit}" if n <= 1 else f"{mean:.{digits}f} ± {std:.{digits}f}{unit}"


def _plot(variants: Sequence[Variant], metrics: Sequence[str], x_field: str, xlabel: str, ylabel: str, title: str,
          path: Path, records: str = "evals", targets: dict[str, float] | None = None, scale: float = 1.0,
          levels: dict[str, dict[str, float]] | None = None) -> Path | None:
    """One panel per metric, one line per variant (mean over seeds, ±std band); baselines dashed.

    ``targets``: labelled horizontal lines on every panel; ``levels``: labelled lines of one metric's panel (a
    chance level); ``scale`` multiplies the metric (fractions to %)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = [m for m in metrics if any(curves(v, m, x_field, records)[0] for v in variants)]
    if not metrics:
        return None
    width = min(15.0, 4.2 + 3.6 * len(metrics))
    fig, axes = plt.subplots(1, len(metrics), figsize=(width, 4.3), dpi=110, squeeze=False)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, metric in zip(axes[0], metrics):
        for i, variant in enumerate(variants):
            xs, ys, sds = curves(variant, metric, x_field, records, scale)
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
