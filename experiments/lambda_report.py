"""λ sensitivity of BYOL + rotation (issue 20, item 5) from the raw records: the final kNN top-1 per λ at one
schedule, paired by seed with λ = 0.1 (the pre-specified headline) and with BYOL of the same schedule.

    python experiments/lambda_report.py experiments/results/cifar10-cpu-lambda/runs \\
        experiments/results/cifar10-cpu-schedules/runs --epochs 12

The λ = 0.1 and BYOL runs are the schedule study's (the same budget and training path); the other λ are the arms
``byol_rotation_lam<λ>`` of ``run_cifar10_cpu_study.sh``. Only finished runs count. Intervals: two-sided 95 %
Student t over the seeds both sides share (none with one shared seed). Prints Markdown.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

# sibling scripts (their folder is on sys.path when Python runs a script)
from paired_finals import finals
from schedules_report import paired_cell as difference
from schedules_table import rows

#: the λ arms' name prefix, and the pre-specified λ (the schedule study's ``byol_rotation`` runs)
ARM, HEADLINE = "byol_rotation_lam", 0.1



def report(lambda_runs: list[dict], schedule_runs: list[dict], epochs: int) -> str:
    byol = finals(schedule_runs, "byol", epochs)
    headline = finals(schedule_runs, "byol_rotation", epochs)
    lambdas = {float(r["arm"].removeprefix(ARM)) for r in lambda_runs if r["arm"].startswith(ARM)} | {HEADLINE}
    lines = [f"BYOL + rotation at {epochs} epochs (its own cosine schedule); BYOL at {epochs} epochs: "
             f"{statistics.fmean(byol.values()):.2f} (n = {len(byol)}).", "",
             "| λ | n | final kNN top-1 per seed | mean | − λ 0.1, paired | − BYOL, paired |",
             "| --- | --- | --- | --- | --- | --- |"]
    for lam in sorted(lambdas):
        values = headline if lam == HEADLINE else finals(lambda_runs, f"{ARM}{lam:g}", epochs)
        if not values:  # runs of another schedule only
            continue
        per_seed = " / ".join(f"s{s} {v:.2f}" for s, v in sorted(values.items()))
        versus = "(reference)" if lam == HEADLINE else difference(values, headline)
        lines.append(f"| {lam:g} | {len(values)} | {per_seed} | {statistics.fmean(values.values()):.2f} | "
                     f"{versus} | {difference(values, byol)} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("lambda_runs", type=Path)
    parser.add_argument("schedule_runs", type=Path)
    parser.add_argument("--epochs", type=int, default=12)
    args = parser.parse_args()
    print(report(rows(args.lambda_runs), rows(args.schedule_runs), args.epochs))


if __name__ == "__main__":
    main()
