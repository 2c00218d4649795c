"""Paired comparisons of finished runs' final kNN top-1 (issue 20, items 2 and 6): for each pair of arms A − B,
the per-seed differences over the seeds both ran, their mean with a two-sided 95 % Student-t interval, and the
paired t-test's two-sided p-value.

    python experiments/paired_finals.py experiments/results/cifar10-cpu/runs \\
        byol_rotation-rotation_only byol_rotation-byol byol_rotation-byol_rotation16 byol_rotation16-byol

Arms are run names without their ``-eE-sS`` / ``-sS`` tail; a pair is written ``A-B`` (arm names contain no
``-``). Only finished runs count (schedules_table's rule); ``--epochs`` picks one schedule where arms have several.
Prints Markdown.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

# sibling scripts (their folder is on sys.path when Python runs a script)
from schedules_report import paired
from schedules_table import rows
from scipy import stats


def finals(runs: list[dict], arm: str, epochs: int | None) -> dict[int, float]:
    """The final kNN top-1 of ``arm``'s runs by seed, at one schedule (``epochs``) or any (None)."""
    return {r["seed"]: r["final"] for r in runs if r["arm"] == arm and epochs in (None, r["epochs"])}


def report(runs: list[dict], pairs: list[tuple[str, str]], epochs: int | None = None) -> str:
    lines = ["| A − B | n | A (mean ± std) | B (mean ± std) | per-seed A − B | mean [95 % t-CI] | p (paired t) |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for a, b in pairs:
        fa, fb = finals(runs, a, epochs), finals(runs, b, epochs)
        shared = sorted(set(fa) & set(fb))
        if len(shared) < 2:
            lines.append(f"| {a} − {b} | {len(shared)} | – | – | – | too few shared seeds | – |")
            continue
        mean, low, high, n, diffs = paired(fa, fb)
        p = stats.ttest_rel([fa[s] for s in shared], [fb[s] for s in shared]).pvalue
        sides = [f"{statistics.fmean(f[s] for s in shared):.2f} ± {statistics.stdev(f[s] for s in shared):.2f}"
                 for f in (fa, fb)]
        per_seed = " / ".join(f"s{s} {d:+.2f}" for s, d in zip(shared, diffs))
        lines.append(f"| {a} − {b} | {n} | {sides[0]} | {sides[1]} | {per_seed} | "
                     f"{mean:+.2f} [{low:+.2f}, {high:+.2f}] | {p:.3g} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", type=Path)
    parser.add_argument("pairs", nargs="+", help="A-B: arm A minus arm B, paired by seed")
    parser.add_argument("--epochs", type=int, default=None)
    args = parser.parse_args()
    pairs = []
    for pair in args.pairs:
        a, sep, b = pair.partition("-")
        if not (sep and a and b) or "-" in b:
            parser.error(f"pair {pair!r}: write it A-B, two arm names joined by one '-'")
        pairs.append((a, b))
    print(report(rows(args.runs), pairs, args.epochs))


if __name__ == "__main__":
    main()
