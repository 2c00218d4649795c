"""The schedule study's table from its raw records: one row per finished run (arm, epochs, seed), its final kNN
top-1, its training CPU time and wall-clock (evaluation excluded), and the kNN at every evaluated epoch.

    python experiments/schedules_table.py experiments/results/cifar10-cpu-schedules/runs

A run counts only when finished (its last evaluation is at its own last epoch): accuracy is read off finished
schedules, never mid-schedule. Prints Markdown.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import yaml

from auxssl.eval.tracker import read_metrics, read_run_info


def rows(folder: Path) -> list[dict]:
    out = []
    for run in sorted(p.parent for p in folder.rglob("run.json")):
        info = read_run_info(run)
        epochs = yaml.safe_load((run / "config.yaml").read_text())["train"]["epochs"]
        evals = read_metrics(run, "eval")
        if not evals or evals[-1]["epoch"] != epochs:
            continue  # unfinished
        arm = re.sub(r"(-e\d+)?-s\d+$", "", run.name)  # ARM-eE-sS (own schedule) or ARM-sS
        out.append({"arm": arm, "path": run, "epochs": epochs, "seed": info.seed, "final": evals[-1]["knn/top1"],
                    "cpu_s": evals[-1].get("train_cpu_s"), "wall_s": evals[-1]["train_time_s"],
                    "machine": info.machine.get("cpu"),  # None where run.json predates the field
                    "curve": {e["epoch"]: e["knn/top1"] for e in evals}})
    return sorted(out, key=lambda r: (r["arm"], r["epochs"], r["seed"]))


def main() -> None:
    found = rows(Path(sys.argv[1]))
    print("| arm | epochs | seed | final kNN top-1 (%) | training CPU time (s) | wall-clock (s) "
          "| kNN at epochs 0, 2, 4, … |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in found:
        curve = " / ".join(f"{v:.1f}" for _, v in sorted(r["curve"].items()))
        cpu = "—" if r["cpu_s"] is None else f"{r['cpu_s']:.0f}"
        print(f"| {r['arm']} | {r['epochs']} | {r['seed']} | {r['final']:.2f} | {cpu} | {r['wall_s']:.0f} | {curve} |")


if __name__ == "__main__":
    main()
