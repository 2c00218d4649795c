"""Rotation's effect on each of the paper's four methods at the CPU study's budget, read off finished runs only
(issue 20; the top-level README's results summary quotes it):

    python experiments/methods_summary.py experiments/results

For every method, differences paired by seed with a two-sided 95 % Student-t interval:

- **equal epochs**: + rotation − base, both trained with the 24-epoch schedule;
- **equal or less CPU time**: + rotation trained with its *own* shorter cosine schedule (`COMPARISONS`: the
  study's schedule whose cost stays at or below the base's 24 epochs) − the base at 24 epochs, beside the ratio
  of their training CPU seconds (``train_cpu_s``, evaluation excluded, one thread per run), computed only where
  both runs of a seed recorded it on the same machine model;
- the base's seed spread (sample std of its 24-epoch finals), the scale the gains compare with.

A positive equal-CPU gain means + rotation reached the base's final accuracy with at most that CPU ratio (an upper
bound on its time to target; the schedule study reads BYOL's exactly by interpolation). Prints Markdown.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path
from typing import NamedTuple

import schedules_report  # sibling scripts (their folder is on sys.path when Python runs one)
from schedules_report import mean_sd, paired
from schedules_table import rows


class Side(NamedTuple):
    folder: str  # under the results folder
    arm: str
    epochs: int


class Comparison(NamedTuple):
    method: str
    base: Side  # the base method at 24 epochs
    rotation: Side  # + rotation at 24 epochs
    matched: Side  # + rotation with its own schedule costing no more than `base`


STUDY, SCHEDULES, NOISE, METHODS = "cifar10-cpu", "cifar10-cpu-schedules", "cifar10-cpu-noise", "cifar10-cpu-methods"
COMPARISONS = [
    Comparison("BYOL", Side(STUDY, "byol", 24), Side(STUDY, "byol_rotation", 24), Side(SCHEDULES, "byol_rotation", 12)),
    Comparison("SimCLR", Side(STUDY, "simclr", 24), Side(STUDY, "simclr_rotation", 24),
               Side(NOISE, "simclr_rotation", 12)),
    Comparison("SimSiam", Side(METHODS, "simsiam", 24), Side(METHODS, "simsiam_rotation", 24),
               Side(METHODS, "simsiam_rotation", 12)),
    Comparison("SwAV", Side(METHODS, "swav", 24), Side(METHODS, "swav_rotation", 24),
               Side(METHODS, "swav_rotation", 16)),
]
#: BYOL's compute-matched pair lives in the schedule study, whose BYOL at 24 epochs ran beside its other schedules
MATCHED_BASE = {"BYOL": Side(SCHEDULES, "byol", 24)}
#: The machine of the runs whose run.json predates the field, where a study's README names it
UNRECORDED_MACHINE = {SCHEDULES: schedules_report.UNRECORDED_MACHINE}


def by_seed(runs: dict[str, list[dict]], side: Side) -> dict[int, dict]:
    """The finished runs of one side, by seed."""
    return {r["seed"]: r for r in runs[side.folder] if r["arm"] == side.arm and r["epochs"] == side.epochs}


def interval(a: dict[int, dict], b: dict[int, dict]) -> str:
    """``a − b`` of the final kNN, paired by seed: mean [95 % t-CI] (n), per seed."""
    shared = sorted(set(a) & set(b))
    if len(shared) < 2:
        return f"too few shared seeds (n = {len(shared)})"
    mean, low, high, n, diffs = paired({s: a[s]["final"] for s in shared}, {s: b[s]["final"] for s in shared})
    return f"**{mean:+.2f}** [{low:+.2f}, {high:+.2f}] (n = {n}: {' / '.join(f'{d:+.2f}' for d in diffs)})"


def cpu_ratio(a: dict[int, dict], b: dict[int, dict]) -> str:
    """Per shared seed, ``a``'s training CPU time over ``b``'s where both recorded it on the same machine model."""
    ratios = [a[s]["cpu_s"] / b[s]["cpu_s"] for s in sorted(set(a) & set(b))
              if a[s]["cpu_s"] and b[s]["cpu_s"] and a[s]["machine"] and a[s]["machine"] == b[s]["machine"]]
    if not ratios:
        return "not measured on one machine"
    spread = f" ({min(ratios):.2f}-{max(ratios):.2f}, n = {len(ratios)})" if len(ratios) > 1 else " (n = 1)"
    return f"{statistics.fmean(ratios):.2f}×{spread}"


def summary(results: Path) -> str:
    folders = {side.folder for c in COMPARISONS for side in (*c[1:], MATCHED_BASE.get(c.method, c.base))}
    runs = {folder: rows(results / folder / "runs") for folder in sorted(folders)}
    for folder, found in runs.items():
        for r in found:
            r["machine"] = r["machine"] or UNRECORDED_MACHINE.get(folder)
    lines = ["| method | base, 24 epochs | + rotation, 24 epochs | equal epochs: + rotation − base | + rotation, own "
             "schedule | its CPU time / base's | equal or less CPU time: + rotation − base |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for c in COMPARISONS:
        base, rotation, matched = by_seed(runs, c.base), by_seed(runs, c.rotation), by_seed(runs, c.matched)
        matched_base = by_seed(runs, MATCHED_BASE.get(c.method, c.base))
        cells = []
        for arm in (base, rotation):
            mean, sd = mean_sd([r["final"] for r in arm.values()]) if arm else (float("nan"), float("nan"))
            cells.append(f"{mean:.2f} ± {sd:.2f} (n = {len(arm)})" if len(arm) > 1 else
                         f"{mean:.2f} (n = {len(arm)})")
        lines.append(f"| {c.method} | {cells[0]} | {cells[1]} | {interval(rotation, base)} | {c.matched.epochs} "
                     f"epochs | {cpu_ratio(matched, matched_base)} | {interval(matched, matched_base)} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", type=Path, help="the results folder (experiments/results)")
    print(summary(parser.parse_args().results))


if __name__ == "__main__":
    main()
