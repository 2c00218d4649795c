"""The SimSiam / SwAV study's README against its committed raw records (recomputed here with numpy and scipy), and
the λ and noise-table reports' pairing rules against hand computations."""

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


@pytest.mark.parametrize(("method", "epochs"), [("simsiam", 12), ("swav", 16)])
def test_the_methods_readme_quotes_the_compute_matched_gains_its_records_give(method: str, epochs: int) -> None:
    """Rotation with its own shorter schedule against the baseline's 24 epochs: kNN gain and CPU-time ratio."""
    readme = (METHODS / "README.md").read_text()

    def last(run: Path) -> dict:
        lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        return [e for e in lines if e["kind"] == "eval"][-1]

    base = [last(METHODS / "runs" / f"{method}-s{s}") for s in range(3)]
    matched = [last(METHODS / "runs" / f"{method}_rotation-e{epochs}-s{s}") for s in range(3)]
    assert all(e["epoch"] == epochs for e in matched)
    gain = np.array([m["knn/top1"] - b["knn/top1"] for m, b in zip(matched, base)])
    low, high = stats.t.interval(0.95, 2, loc=gain.mean(), scale=stats.sem(gain))
    ratio = np.mean([m["train_cpu_s"] / b["train_cpu_s"] for m, b in zip(matched, base)])
    assert f"**{ratio:.2f}×**" in readme and f"**{gain.mean():+.2f}** [{low:+.2f}, {high:+.2f}]" in readme


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


def test_the_noise_tables_report_pairs_levels_and_readings_and_averages_the_measured_noise(load_script,
                                                                                            tmp_path: Path) -> None:
    def run(arm: str, seed: int, value: float, noise: dict[str, list[float]] | None = None, epochs: int = 12) -> dict:
        folder = tmp_path / f"{arm}-e{epochs}-s{seed}"
        folder.mkdir()
        records = [{"kind": "train"} | {key: values[i] for key, values in (noise or {}).items()}
                   for i in range(max((len(v) for v in (noise or {}).values()), default=0))]
        (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
        return {"arm": arm, "path": folder, "epochs": epochs, "seed": seed, "final": value}

    runs = [run("simclr", 0, 40.0, {"noise/fn_removed": [0.0, 0.0]}), run("simclr", 1, 41.0),
            run("simclr_rotation", 0, 42.0), run("simclr_rotation", 1, 44.0),
            run("simclr_fnpairs0.3", 0, 41.0, {"noise/fn_removed": [0.2, 0.4], "noise/fn_rate": [0.07, 0.07]}),
            run("simclr_fnpairs0.3", 1, 43.0, {"noise/fn_removed": [0.3]}),  # run means 0.3 and 0.3
            run("simclr_rotation_fnpairs0.3", 0, 45.0), run("simclr_rotation_fnpairs0.3", 1, 46.0),
            run("simclr_fnimages0.3", 0, 39.0, {"noise/fn_removed": [0.09]}),
            run("simclr_fnimages0.3", 1, 20.0, epochs=24),  # another schedule: not in the 12-epoch table
            run("byol_good1", 0, 33.0, {"noise/fp_rate": [0.0], "noise/crop_ios_low": [0.0]}),
            run("byol", 0, 30.0, {"noise/fp_rate": [0.6, 0.7]}), run("simsiam", 0, 50.0)]
    text = load_script("experiments/noise_tables_report.py").report(runs, 12)
    def ci(*diffs: float) -> str:
        low, high = stats.t.interval(0.95, len(diffs) - 1, loc=np.mean(diffs), scale=stats.sem(diffs))
        return f"{np.mean(diffs):+.2f} [{low:+.2f}, {high:+.2f}] (n = {len(diffs)})"

    assert (f"| 0 | - | 0.000 | – | 40.50 ± 0.71 (n = 2) | 43.00 ± 1.41 (n = 2) | {ci(2.0, 3.0)} | "
            "(reference) | (reference) |") in text
    assert "| 0.3 | images | 0.090 | – | 39.00 (n = 1) | – | – | -1.00 (n = 1) | – |" in text
    pairs = next(line for line in text.splitlines() if line.startswith("| 0.3 | pairs |"))
    assert pairs.startswith("| 0.3 | pairs | 0.300 | 0.070 | 42.00 ± 1.41 (n = 2) | 45.50 ± 0.71 (n = 2) |")
    assert pairs.endswith(f"| {ci(4.0, 3.0)} | {ci(1.0, 2.0)} | {ci(3.0, 2.0)} |")
    assert "| 0 | - | 0.650 | – | 30.00 (n = 1) | – | – |" in text and "| 1 | - | 0.000 | 0.000 | 33.00" in text
    assert "50.00" not in text and "20.00" not in text


def test_paired_finals_differs_by_shared_seed_with_the_t_interval_and_p_value(load_script) -> None:
    def run(arm: str, seed: int, value: float, epochs: int = 24) -> dict:
        return {"arm": arm, "epochs": epochs, "seed": seed, "final": value}

    runs = [run("a", 0, 40.0), run("a", 1, 43.0), run("a", 2, 41.0), run("a", 3, 50.0),
            run("b", 0, 38.0), run("b", 1, 42.0), run("b", 2, 37.0),  # seed 3 only in a: not paired
            run("b", 4, 30.0), run("b", 1, 10.0, epochs=12), run("c", 0, 1.0)]
    text = load_script("experiments/paired_finals.py").report(runs, [("a", "b"), ("a", "c")], epochs=24)
    diffs = np.array([2.0, 1.0, 4.0])
    low, high = stats.t.interval(0.95, 2, loc=diffs.mean(), scale=stats.sem(diffs))
    p = stats.ttest_1samp(diffs, 0.0).pvalue
    assert (f"| a − b | 3 | 41.33 ± 1.53 | 39.00 ± 2.65 | s0 +2.00 / s1 +1.00 / s2 +4.00 | "
            f"+2.33 [{low:+.2f}, {high:+.2f}] | {p:.3g} |") in text
    assert "| a − c | 1 | – | – | – | too few shared seeds | – |" in text


#: the CPU study's claims (experiments/results/cifar10-cpu/README.md), each a paired comparison of final kNN
STUDY_PAIRS = [("byol_rotation", "byol"), ("byol_rotation", "rotation_only"), ("rotation_only", "byol"),
               ("byol_rotation", "byol_rotation16"), ("byol_rotation16", "byol"), ("simclr_rotation", "simclr")]


def test_the_cpu_study_readme_quotes_the_paired_comparisons_of_its_records(load_script) -> None:
    script = load_script("experiments/paired_finals.py")
    study = ROOT / "experiments" / "results" / "cifar10-cpu"
    text = script.report(script.rows(study / "runs"), STUDY_PAIRS)
    readme = (study / "README.md").read_text()
    assert all(line in readme for line in text.splitlines()[2:])


def test_the_noise_tables_readme_quotes_the_report_of_its_records(load_script) -> None:
    script = load_script("experiments/noise_tables_report.py")
    results = ROOT / "experiments" / "results"
    runs = script.rows(results / "cifar10-cpu-noise" / "runs") + script.rows(results / "cifar10-cpu-schedules" / "runs")
    text = script.report(runs, 12)
    readme = (results / "cifar10-cpu-noise" / "README.md").read_text()
    assert all(line in readme for line in text.splitlines() if line.startswith("| "))


def test_the_methods_summary_pairs_by_seed_and_divides_cpu_time_within_one_machine(load_script) -> None:
    script = load_script("experiments/methods_summary.py")

    def run(final: float, cpu: float | None = None, machine: str | None = "m1") -> dict:
        return {"final": final, "cpu_s": cpu, "machine": machine}

    rotation = {0: run(40.0, 800.0), 1: run(42.0, 900.0, "m2"), 2: run(41.0, 700.0), 3: run(50.0)}
    base = {0: run(38.0, 1000.0), 1: run(41.0, 1000.0), 2: run(37.0, 1000.0), 4: run(30.0, 1000.0)}
    diffs = np.array([2.0, 1.0, 4.0])  # seeds 0-2: the seeds both arms ran
    low, high = stats.t.interval(0.95, 2, loc=diffs.mean(), scale=stats.sem(diffs))
    assert script.interval(rotation, base) == f"**+2.33** [{low:+.2f}, {high:+.2f}] (n = 3: +2.00 / +1.00 / +4.00)"
    # seed 1 ran its two runs on different machines and seed 3 has no base run: 0.8 and 0.7 remain
    assert script.cpu_ratio(rotation, base) == "0.75× (0.70-0.80, n = 2)"
    assert script.cpu_ratio({1: rotation[1]}, base) == "not measured on one machine"
    assert script.interval({0: rotation[0]}, base) == "too few shared seeds (n = 1)"


def test_the_top_level_readme_quotes_the_methods_summary_of_the_records(load_script) -> None:
    """The README's per-method table is what `methods_summary.py` computes from the committed runs."""
    script = load_script("experiments/methods_summary.py")
    table = script.summary(ROOT / "experiments" / "results")
    readme = (ROOT / "README.md").read_text()
    rows = [line for line in table.splitlines() if line.startswith("| ")]
    assert len(rows) == 6 and all(line in readme for line in rows)
