"""The noise tables at the study budget (issue 20, item 7) from the raw records: the structure of the paper's
Table 1 (SimCLR ± rotation, false negatives eliminated) and Table 2 (BYOL ± rotation, a share of the positive
pairs forced to be good crops), each accuracy next to the noise its runs measured.

    python experiments/noise_tables_report.py experiments/results/cifar10-cpu-noise/runs \\
        experiments/results/cifar10-cpu-schedules/runs --epochs 12

Runs are the study script's noise arms (``simclr_fnimages0.3``, ``simclr_rotation_fnpairs0.5``,
``byol_good0.25``, …) and their uncontrolled arms (``simclr``, ``byol_rotation``, …: level 0), at one schedule,
from any of the folders given. Only finished runs count. Per cell: the final kNN top-1, mean ± sample std (n);
paired differences by seed with a two-sided 95 % Student-t interval (rotation − base at the same level; the level
against level 0 of the same arm). The measured noise is the mean over the run's logged training steps of
``noise/fn_removed`` and ``noise/fn_rate`` (Table 1), ``noise/fp_rate`` (the share of pairs with IoU < 0.5,
the good-crop criterion; nothing is injected here) and ``noise/crop_ios_low`` (less than half of the smaller crop
inside the other: different content) (Table 2), over the base arm's runs. Prints Markdown.
"""

from __future__ import annotations

import argparse
import re
import statistics
from pathlib import Path

# sibling scripts (their folder is on sys.path when Python runs a script)
from schedules_report import paired_cell
from schedules_table import rows

from auxssl.eval.tracker import read_metrics

#: arm names: METHOD[_rotation][_fn(images|pairs)P | _goodR]
ARM = re.compile(r"^(?P<method>[a-z0-9]+?)(?P<rotation>_rotation)?"
                 r"(?:_fn(?P<mode>images|pairs)(?P<fn>[0-9.]+)|_good(?P<good>[0-9.]+))?$")
TABLES = {  # table: (method, control, measured noise columns)
    1: ("simclr", "fn", ("noise/fn_removed", "noise/fn_rate")),
    2: ("byol", "good", ("noise/fp_rate", "noise/crop_ios_low")),
}
HEADERS = {"noise/fn_removed": "false negatives removed", "noise/fn_rate": "false-negative rate kept",
           "noise/fp_rate": "pairs with IoU < 0.5", "noise/crop_ios_low": "pairs < ½ of the smaller crop shared"}


def parse(runs: list[dict]) -> list[dict]:
    """Each run with its method, rotation flag, reading (``images``/``pairs`` for Table 1; ``-`` at level 0 and
    for Table 2) and level; runs of other arms are dropped. (At p = 1 both readings remove every false negative.)"""
    out = []
    for run in runs:
        match = ARM.match(run["arm"])
        if not match:
            continue
        level = float(match["fn"] or match["good"] or 0)
        reading = match["mode"] or "-"
        out.append(run | {"method": match["method"], "rotation": bool(match["rotation"]), "level": level,
                          "control": "fn" if match["fn"] else "good" if match["good"] else None,
                          "reading": reading})
    return out


def measured(runs: list[dict], key: str) -> str:
    """The mean over runs of each run's mean of ``key`` over its training records ("–" where none logs it)."""
    means = []
    for run in runs:
        values = [record[key] for record in read_metrics(run["path"], "train") if key in record]
        if values:
            means.append(statistics.fmean(values))
    return f"{statistics.fmean(means):.3f}" if means else "–"


def cell(values: dict[int, float]) -> str:
    if not values:
        return "–"
    mean = statistics.fmean(values.values())
    spread = f" ± {statistics.stdev(values.values()):.2f}" if len(values) > 1 else ""
    return f"{mean:.2f}{spread} (n = {len(values)})"


def table(runs: list[dict], number: int, epochs: int) -> str:
    method, control, noise_keys = TABLES[number]
    mine = [r for r in runs if r["method"] == method and r["epochs"] == epochs and r["control"] in (None, control)]
    settings = sorted({(r["level"], r["reading"]) for r in mine})

    def finals(rotation: bool, setting: tuple[float, str]) -> dict[int, float]:
        return {r["seed"]: r["final"] for r in mine
                if r["rotation"] == rotation and (r["level"], r["reading"]) == setting}

    level_name = "p" if control == "fn" else "r"
    lines = ["| " + " | ".join([level_name, "reading", *(HEADERS[k] for k in noise_keys), method,
                                f"{method} + rotation", "rotation − base, paired", f"{method} − level 0, paired",
                                "+ rotation − level 0, paired"]) + " |",
             "|" + " --- |" * (len(noise_keys) + 7)]
    zero = (0.0, "-")
    for setting in settings:
        base, rotation = finals(False, setting), finals(True, setting)
        base_runs = [r for r in mine if not r["rotation"] and (r["level"], r["reading"]) == setting]
        against_zero = ["(reference)"] * 2 if setting == zero else [paired_cell(base, finals(False, zero)),
                                                                    paired_cell(rotation, finals(True, zero))]
        lines.append("| " + " | ".join([f"{setting[0]:g}", setting[1], *(measured(base_runs, k) for k in noise_keys),
                                        cell(base), cell(rotation), paired_cell(rotation, base), *against_zero]) + " |")
    return "\n".join(lines)


def report(runs: list[dict], epochs: int) -> str:
    parsed = parse(runs)
    return "\n".join([f"Table 1 structure (SimCLR, false-negative elimination), {epochs} epochs:", "",
                      table(parsed, 1, epochs), "",
                      f"Table 2 structure (BYOL, a share r of the positive pairs forced to be good crops), {epochs} "
                      "epochs:", "", table(parsed, 2, epochs)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", type=Path, nargs="+", help="folders of runs (searched recursively)")
    parser.add_argument("--epochs", type=int, default=12)
    args = parser.parse_args()
    print(report([r for folder in args.runs for r in rows(folder)], args.epochs))


if __name__ == "__main__":
    main()
