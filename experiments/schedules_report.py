"""The schedule study's report (issue 20, items 1-2) from its raw records: what a reviewer asks for.

    python experiments/schedules_report.py experiments/results/cifar10-cpu-schedules/runs [--plot PNG]

Only finished runs count (a run's last evaluation is at its own last epoch): accuracy is read off finished
schedules, never mid-schedule. Prints Markdown:

- per arm and schedule: final kNN top-1, mean ± sample std (n), and the training cost;
- paired differences by seed (the arms share seeds 0, 1, 2) with a two-sided 95 % Student-t interval;
- time to target: the target is the baseline's (BYOL at 24 epochs) mean final accuracy. An arm's finished
  schedules, in order of length, give points (cost, mean final accuracy); the time to target is read by linear
  interpolation between the first two consecutive schedules that bracket it (none: "not reached"). The speed-up
  is the baseline's cost divided by that, in epochs and in cost. The same rule is applied per seed (each seed's
  own schedules), and to each of the baseline's seeds against the baseline's mean: their spread is the noise
  floor of the speed-up;
- cost: ``train_cpu_s`` (process CPU time over training, evaluation excluded; one thread per run) in *BYOL-epoch
  equivalents*: divided by the median CPU seconds per epoch of the BYOL runs on the same machine, which puts the
  two machines the runs shared on one scale.
"""

from __future__ import annotations

import argparse
import statistics
from collections import defaultdict
from pathlib import Path

from schedules_table import rows  # a sibling script (its folder is on sys.path when Python runs a script)
from scipy import stats

BASELINE, BASELINE_EPOCHS = "byol", 24
#: The runs whose run.json predates the machine field ran on this machine (the study README's machine note).
UNRECORDED_MACHINE = "AMD EPYC (family 25, model 17)"


def finished_runs(folder: Path) -> list[dict]:
    """`schedules_table.rows` (finished runs only), each with its cost in BYOL-epoch equivalents."""
    out = rows(folder)
    for r in out:
        r["machine"] = r["machine"] or UNRECORDED_MACHINE
    per_epoch: dict[str, list[float]] = defaultdict(list)
    for r in out:
        if r["arm"] == BASELINE:
            per_epoch[r["machine"]].append(r["cpu_s"] / r["epochs"])
    unit = {machine: statistics.median(v) for machine, v in per_epoch.items()}
    for r in out:
        r["cost"] = r["cpu_s"] / unit[r["machine"]]
    return out


def mean_sd(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else float("nan")


def paired(a: dict[int, float], b: dict[int, float]) -> tuple[float, float, float, int, list[float]]:
    """Mean of a − b over the shared seeds, its 95 % t interval, n, and the differences."""
    diffs = [a[s] - b[s] for s in sorted(set(a) & set(b))]
    mean, sd = mean_sd(diffs)
    half = stats.t.ppf(0.975, len(diffs) - 1) * sd / len(diffs) ** 0.5
    return mean, mean - half, mean + half, len(diffs), diffs


def paired_cell(a: dict[int, float], b: dict[int, float]) -> str:
    """A table cell for a − b paired by seed: the mean difference with its 95 % t interval and n, the single
    difference at one shared seed, "–" at none."""
    shared = set(a) & set(b)
    if not shared:
        return "–"
    if len(shared) == 1:
        (seed,) = shared
        return f"{a[seed] - b[seed]:+.2f} (n = 1)"
    mean, low, high, n, _ = paired(a, b)
    return f"{mean:+.2f} [{low:+.2f}, {high:+.2f}] (n = {n})"


def crossing(points: list[tuple[float, float]], target: float) -> float | None:
    """The x at which the piecewise-linear curve through ``points`` (x ascending, y = accuracy) first reaches
    ``target``; None if it never does; the first x if its first point already does."""
    if points and points[0][1] >= target:
        return points[0][0]
    for (x0, y0), (x1, y1) in zip(points, points[1:]):
        if y0 < target <= y1:
            return x0 + (target - y0) * (x1 - x0) / (y1 - y0)
    return None


def curve(runs: list[dict], x: str) -> list[tuple[float, float]]:
    by_epochs: dict[int, list[dict]] = defaultdict(list)
    for r in runs:
        by_epochs[r["epochs"]].append(r)
    return [(statistics.fmean(r[x] for r in rs), statistics.fmean(r["final"] for r in rs))
            for _, rs in sorted(by_epochs.items())]


def report(runs: list[dict]) -> str:
    arms = sorted({r["arm"] for r in runs}, key=lambda a: (a != BASELINE, a))
    lines = ["| arm | epochs | n | final kNN top-1 (%) | cost (BYOL-epoch equivalents) | CPU s |",
             "| --- | --- | --- | --- | --- | --- |"]
    cell = defaultdict(dict)  # (arm, epochs) -> seed -> run
    for r in runs:
        cell[(r["arm"], r["epochs"])][r["seed"]] = r
    for arm in arms:
        for epochs in sorted(e for a, e in cell if a == arm):
            rs = list(cell[(arm, epochs)].values())
            m, s = mean_sd([r["final"] for r in rs])
            c, cs = mean_sd([r["cost"] for r in rs])
            lines.append(f"| {arm} | {epochs} | {len(rs)} | {m:.2f} ± {s:.2f} | {c:.1f} ± {cs:.1f} | "
                         f"{statistics.fmean(r['cpu_s'] for r in rs):.0f} |")
    out = ["### Final accuracy and cost per schedule (mean ± sd over seeds)", "", *lines, ""]

    def finals(arm: str, epochs: int) -> dict[int, float]:
        return {s: r["final"] for s, r in cell.get((arm, epochs), {}).items()}

    out += ["### Paired differences by seed (95 % t interval)", "",
            "| comparison | mean difference (points) | 95 % CI | n | per seed |", "| --- | --- | --- | --- | --- |"]
    other = [a for a in arms if a != BASELINE]
    comparisons = [(f"{a}@{e} − {BASELINE}@{e} (same epochs)", a, e, BASELINE, e)
                   for a in other for e in sorted(e for x, e in cell if x == a) if (BASELINE, e) in cell]
    for a in other:  # at matched cost: the baseline schedule whose mean cost is closest
        for e in sorted(e for x, e in cell if x == a):
            cost = statistics.fmean(r["cost"] for r in cell[(a, e)].values())
            base = min((e2 for x, e2 in cell if x == BASELINE),
                       key=lambda e2: abs(statistics.fmean(r["cost"] for r in cell[(BASELINE, e2)].values()) - cost))
            base_cost = statistics.fmean(r["cost"] for r in cell[(BASELINE, base)].values())
            if base != e and abs(base_cost - cost) / cost < 0.1:
                comparisons.append((f"{a}@{e} − {BASELINE}@{base} (cost {cost:.1f} vs {base_cost:.1f})", a, e,
                                    BASELINE, base))
    for name, a, e, b, f in comparisons:
        mean, low, high, n, diffs = paired(finals(a, e), finals(b, f))
        out.append(f"| {name} | {mean:+.2f} | [{low:+.2f}, {high:+.2f}] | {n} | "
                   f"{' / '.join(f'{d:+.2f}' for d in diffs)} |")
    out.append("")

    base_runs = [r for r in runs if r["arm"] == BASELINE]
    target = statistics.fmean(r["final"] for r in base_runs if r["epochs"] == BASELINE_EPOCHS)
    base_cost = statistics.fmean(r["cost"] for r in base_runs if r["epochs"] == BASELINE_EPOCHS)
    out += [f"### Time to the target {target:.2f} % ({BASELINE} at {BASELINE_EPOCHS} epochs, mean of its seeds)", "",
            "| arm | epochs to target | speed-up in epochs | cost to target | speed-up in cost | per seed: speed-up "
            "in epochs / in cost |", "| --- | --- | --- | --- | --- | --- |"]
    for arm in arms:
        rs = [r for r in runs if r["arm"] == arm]
        e_hit, c_hit = crossing(curve(rs, "epochs"), target), crossing(curve(rs, "cost"), target)
        seeds = []
        for seed in sorted({r["seed"] for r in rs}):
            mine = [r for r in rs if r["seed"] == seed]
            e_s, c_s = crossing(curve(mine, "epochs"), target), crossing(curve(mine, "cost"), target)
            seeds.append("not reached" if e_s is None else
                         f"{BASELINE_EPOCHS / e_s:.2f}× / {base_cost / c_s:.2f}×")
        label = arm + (" (its own seeds against its mean: the noise floor)" if arm == BASELINE else "")
        if e_hit is None:
            out.append(f"| {label} | not reached | — | not reached | — | {'; '.join(seeds)} |")
            continue
        out.append(f"| {label} | {e_hit:.1f} | {BASELINE_EPOCHS / e_hit:.2f}× | {c_hit:.1f} | {base_cost / c_hit:.2f}× "
                   f"| {'; '.join(seeds)} |")
    machines = sorted({r["machine"] for r in runs})
    out += ["", "Cost unit (CPU seconds of one BYOL epoch, median per machine): " + "; ".join(
        f"{m}: {statistics.median(r['cpu_s'] / r['epochs'] for r in base_runs if r['machine'] == m):.1f} s"
        for m in machines) + "."]
    return "\n".join(out)


def pareto_plot(runs: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=120)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, arm in enumerate(sorted({r["arm"] for r in runs}, key=lambda a: (a != BASELINE, a))):
        rs = [r for r in runs if r["arm"] == arm]
        ax.scatter([r["cost"] for r in rs], [r["final"] for r in rs], s=14, color=colours[i], alpha=0.7)
        xs, ys = zip(*curve(rs, "cost"))
        ax.plot(xs, ys, "--" if arm == BASELINE else "-", color=colours[i], label=f"{arm} (schedule means)")
    target = statistics.fmean(r["final"] for r in runs if r["arm"] == BASELINE and r["epochs"] == BASELINE_EPOCHS)
    ax.axhline(target, color="grey", linewidth=0.8, linestyle=":")
    ax.text(ax.get_xlim()[0], target, f" target {target:.2f} %", va="bottom", fontsize=8, color="grey")
    ax.set_xlabel("training cost (BYOL-epoch equivalents of CPU time)")
    ax.set_ylabel("final kNN top-1 (%)")
    ax.set_title("Finished schedules: accuracy vs cost, one point per run", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", type=Path)
    parser.add_argument("--plot", type=Path, help="write the accuracy-vs-cost plot here (PNG)")
    args = parser.parse_args()
    runs = finished_runs(args.runs)
    print(report(runs))
    if args.plot:
        pareto_plot(runs, args.plot)


if __name__ == "__main__":
    main()
