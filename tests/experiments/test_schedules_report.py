"""The schedule study's report: its rules against hand computations, and the committed README's figures against
the report recomputed from the committed raw records."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
STUDY = ROOT / "experiments" / "results" / "cifar10-cpu-schedules"


def test_time_to_target_interpolates_between_the_bracketing_schedules(load_script) -> None:
    crossing = load_script("experiments/schedules_report.py").crossing
    points = [(8, 30.0), (12, 33.0), (16, 32.0), (24, 36.0)]
    assert crossing(points, 31.5) == pytest.approx(10.0)  # halfway from 8 to 12
    assert crossing(points, 34.0) == pytest.approx(16 + 8 * 2 / 4)  # the first bracketing pair (16 → 24)
    assert crossing(points, 29.0) == 8 and crossing(points, 37.0) is None


def test_paired_interval_is_the_student_t_interval_of_the_differences(load_script) -> None:
    paired = load_script("experiments/schedules_report.py").paired
    mean, low, high, n, diffs = paired({0: 3.0, 1: 5.0, 2: 4.0, 7: 9.0}, {0: 1.0, 1: 1.0, 2: 1.0})
    assert (n, diffs, mean) == (3, [2.0, 4.0, 3.0], 3.0)
    half = 4.302652729911275 * 1.0 / math.sqrt(3)  # t(0.975, 2) · sd / √n, sd of 2, 4, 3 = 1
    assert (low, high) == pytest.approx((3 - half, 3 + half))


def test_the_study_readme_quotes_what_the_records_give(load_script) -> None:
    script = load_script("experiments/schedules_report.py")
    text = script.report(script.finished_runs(STUDY / "runs"))
    readme = (STUDY / "README.md").read_text()
    for line in text.splitlines():
        if line.startswith("| byol"):
            assert line in readme, line
    for quoted in ("+0.38 | [-0.57, +1.33]", "| byol_rotation | 12.9 | 1.85× | 21.6 | 1.09× |"):
        assert quoted in text
