"""The SimSiam / SwAV study's README against its committed raw records (recomputed here with numpy and scipy), and
the λ report's pairing rules against hand computations."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

ROOT = Path(__file__).resolve().parents[2]
METHODS = ROOT / "experiments" / "results" / "cifar10-cpu-methods"


def final(run: Path) -> tuple[float, float]:
    """The last evaluation's kNN top-1 and the offline linear probe's top-1."""
    evals = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    evals = [e for e in evals if e["kind"] == "eval"]
    return evals[-1]["knn/top1"], json.loads((run / "probe.json").read_text())["linear/top1"]


@pytest.mark.parametrize("method", ["simsiam", "swav"])
def test_the_methods_readme_quotes_the_paired_gains_its_records_give(method: str) -> None:
    readme = (METHODS / "README.md").read_text()
    base = np.array([final(METHODS / "runs" / f"{method}-s{s}") for s in range(3)])
    rotation = np.array([final(METHODS / "runs" / f"{method}_rotation-s{s}") for s in range(3)])
    for column in (0, 1):  # kNN, linear
        gain = rotation[:, column] - base[:, column]
        low, high = stats.t.interval(0.95, 2, loc=gain.mean(), scale=stats.sem(gain))
        assert f"**{gain.mean():+.2f}** [{low:+.1f}, {high:+.1f}]" in readme
        for arm in (base, rotation):
            assert f"{arm[:, column].mean():.2f} ± {arm[:, column].std(ddof=1):.2f}" in readme


def test_the_lambda_report_pairs_by_seed_against_the_headline_and_byol(load_script) -> None:
    def run(arm: str, seed: int, value: float) -> dict:
        return {"arm": arm, "epochs": 12, "seed": seed, "final": value}

    schedules = [run("byol", 0, 30.0), run("byol", 1, 31.0), run("byol_rotation", 0, 34.0),
                 run("byol_rotation", 1, 36.0), run("byol_rotation", 2, 35.0), run("byol", 2, 32.0),
                 run("byol_rotation", 0, 99.0) | {"epochs": 24}]
    lambdas = [run("byol_rotation_lam0.3", 0, 35.0), run("byol_rotation_lam0.3", 1, 38.0),
               run("byol_rotation_lam1", 1, 33.0)]
    text = load_script("experiments/lambda_report.py").report(lambdas, schedules, 12)
    half = stats.t.ppf(0.975, 1) * np.std([1.0, 2.0], ddof=1) / np.sqrt(2)  # λ 0.3 − λ 0.1: +1, +2
    assert f"| 0.3 | 2 | s0 35.00 / s1 38.00 | 36.50 | +1.50 [{1.5 - half:+.2f}, {1.5 + half:+.2f}] (n = 2) |" in text
    assert "| 1 | 1 | s1 33.00 | 33.00 | -3.00 (n = 1) | +2.00 (n = 1) |" in text
    assert "| 0.1 | 3 | s0 34.00 / s1 36.00 / s2 35.00 | 35.00 | (reference) |" in text


def test_the_lambda_readme_quotes_the_report_of_its_records(load_script) -> None:
    script = load_script("experiments/lambda_report.py")
    results = ROOT / "experiments" / "results"
    text = script.report(script.rows(results / "cifar10-cpu-lambda" / "runs"),
                         script.rows(results / "cifar10-cpu-schedules" / "runs"), 12)
    readme = (results / "cifar10-cpu-lambda" / "README.md").read_text()
    assert all(line in readme for line in text.splitlines() if line.startswith("| "))
