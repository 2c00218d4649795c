"""Tracking records and the convergence report, checked against numbers computed by hand."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from auxssl.eval import MetricsLog, RunInfo, TrainClock, read_metrics, write_report, write_run_info

PROTOCOL = {"kNN": "weighted cosine kNN, k=200, T=0.1"}


EVALUATION = {"data": {"dataset": "cifar10", "image_size": 32, "bank_size": 50000, "test_size": 10000},
              "knn": {"k": 200, "temperature": 0.1}}


def make_run(root: Path, name: str, tasks: list[str], seed: int, acc, seconds_per_epoch: float, protocol=PROTOCOL,
             evaluation=None, linear: float | None = None, method: str = "byol") -> Path:
    run = root / name
    evaluation = EVALUATION if evaluation is None else evaluation
    write_run_info(run, RunInfo(name=name, method=method, dataset="cifar10", tasks=tasks, seed=seed, epochs=100,
                                protocol=protocol, evaluation=evaluation, budget={"epochs": 100, "batch_size": 256}))
    log = MetricsLog(run)
    for epoch in range(10, 101, 10):
        time_s = epoch * seconds_per_epoch
        log.append("train", epoch=epoch, step=epoch * 10, images_seen=epoch * 2560, train_time_s=time_s,
                   loss=5 - epoch / 50, **{"loss/base": 4 - epoch / 50},
                   **({"loss/rotation": 1.0 - epoch / 200, "acc/rotation": epoch / 110} if tasks else {}))
        log.append("eval", epoch=epoch, step=epoch * 10, images_seen=epoch * 2560, train_time_s=time_s,
                   **{"knn/top1": acc(epoch), "knn/top5": 99.0}, **({"linear/top1": linear} if linear else {}))
    return run


@pytest.fixture
def runs(tmp_path: Path) -> Path:
    root = tmp_path / "grid"
    make_run(root, "byol-s0", [], 0, lambda e: 40 + 0.4 * e, 10.0)  # final 80
    make_run(root, "byol-s1", [], 1, lambda e: 42 + 0.4 * e, 10.0)  # final 82
    make_run(root, "byol_rot-s0", ["rotation"], 0, lambda e: min(95.0, 50 + 0.5 * e), 12.0)  # ≥ 81 first at 70
    make_run(root, "byol_rot-s1", ["rotation"], 1, lambda e: min(95.0, 55 + 0.5 * e), 12.0)  # ≥ 81 first at 60
    return root


def test_report_contains_hand_computed_numbers(runs: Path, tmp_path: Path) -> None:
    report = write_report([runs], tmp_path / "report")
    md = report.markdown.read_text()
    # baseline final kNN: mean(80, 82) = 81, sample std √2 = 1.41; 100 epochs of 10 s each
    assert "81.00 ± 1.41" in md and "100 ep / 1000 s" in md
    # epochs to reach 81: 70 and 60 → 65.0 ± 7.1; speed-ups 100/70 = 1.4286, 100/60 = 1.6667 → 1.55 ± 0.17
    assert "65.0 ± 7.1 ep" in md and "1.55 ± 0.17×" in md
    # wall-clock: 70·12 = 840 s and 60·12 = 720 s → 780 ± 85 s; 1000/840 = 1.1905, 1000/720 = 1.3889 → 1.29 ± 0.14
    assert "780 ± 85 s" in md and "1.29 ± 0.14×" in md
    assert "2/2" in md and "95.00" in md and "k=200, T=0.1" in md
    # n and the seeds; the baseline's own seeds against its mean 81: s0 never, s1 at epoch 100 → floor 1.00×
    assert "| byol+rotation | cifar10 | 2 (0, 1) |" in md and "above the noise floor (1.00×)" in md
    # kNN by epoch: baseline at epoch 10 is mean(44, 46) = 45.0 ± 1.4; the rotation runs mean(55, 60) = 57.5 ± 3.5
    assert "| ep 10 |" in md and "| byol | 45.0 ± 1.4 |" in md and "| byol+rotation | 57.5 ± 3.5 |" in md
    html = report.html.read_text()
    assert html.count("data:image/png;base64,") == len(report.plots) == 4
    assert "1.55 ± 0.17×" in html and "<table>" in html
    assert {p.name for p in report.plots} == {"knn_vs_epoch.png", "knn_vs_time.png", "losses.png", "aux_accuracy.png"}


def test_a_one_seed_speed_up_is_not_headlined_as_a_result(tmp_path: Path) -> None:
    make_run(tmp_path, "base", [], 0, lambda e: 0.8 * e, 1.0)  # final 80
    make_run(tmp_path, "rot", ["rotation"], 0, lambda e: min(90.0, 1.6 * e), 1.0)  # 80 at epoch 50: "2.00×"
    md = write_report([tmp_path], tmp_path / "out").markdown.read_text()
    row = next(line for line in md.splitlines() if line.startswith("| byol+rotation | byol |"))
    assert "2.00×" in row and row.rstrip(" |").endswith("n = 1: not a result")


def test_a_speed_up_within_the_baselines_own_spread_is_shown_as_such(tmp_path: Path) -> None:
    make_run(tmp_path, "base-s0", [], 0, lambda e: 60 + 0.3 * e, 1.0)  # final 90; reaches the mean 80 at 70
    make_run(tmp_path, "base-s1", [], 1, lambda e: 0.7 * e, 1.0)  # final 70
    for seed in (0, 1):
        make_run(tmp_path, f"rot-s{seed}", ["rotation"], seed, lambda e: float(e), 1.0)  # 80 at epoch 80: 1.25×
    md = write_report([tmp_path], tmp_path / "out").markdown.read_text()
    row = next(line for line in md.splitlines() if line.startswith("| byol+rotation | byol |"))
    assert "1.25 ± 0.00×" in row and "1.43× / 1.43×" in row and "within the noise floor (1.43×)" in row  # 100/70


def test_report_text_has_no_python_none_and_counts_in_words(tmp_path: Path) -> None:
    run = make_run(tmp_path, "base", [], 0, lambda e: 0.8 * e, 1.0)
    info = json.loads((run / "run.json").read_text())
    info["budget"]["train_subset"] = None
    (run / "run.json").write_text(json.dumps(info))
    md = write_report([tmp_path], tmp_path / "out").markdown.read_text()
    assert "from 1 run." in md and "train_subset none" in md and "None" not in md


def test_report_marks_seeds_that_never_reach_the_baseline(tmp_path: Path) -> None:
    make_run(tmp_path, "base", [], 0, lambda e: 0.8 * e, 1.0)  # final 80
    make_run(tmp_path, "slow", ["rotation"], 0, lambda e: 0.5 * e, 1.0)  # final 50
    md = write_report([tmp_path], tmp_path / "out").markdown.read_text()
    assert "not reached" in md and "0/1" in md


def test_a_control_without_base_loss_is_timed_against_every_baseline(tmp_path: Path) -> None:
    """Rotation alone (method none, the paper's table-4 control) has no baseline of its own: it is paired with
    each base method of its dataset, so the report says whether the task alone reaches what they reach."""
    make_run(tmp_path, "byol", [], 0, lambda e: 0.8 * e, 10.0, method="byol")  # final 80
    make_run(tmp_path, "simclr", [], 0, lambda e: 0.5 * e, 10.0, method="simclr")  # final 50
    make_run(tmp_path, "rot", ["rotation"], 0, lambda e: 1.0 * e, 5.0, method="none")  # 50 at 50, 80 at 80
    md = write_report([tmp_path], tmp_path / "out").markdown.read_text()
    timing = md[md.index("## Time to the baseline's accuracy"):]
    rows = [line for line in timing.splitlines() if line.startswith("| none+rotation |")]
    assert len(rows) == 2
    byol_row, simclr_row = sorted(rows, key=lambda line: "simclr" in line)
    assert "| byol | 80.00 |" in byol_row and "80.0 ep" in byol_row and "1.25×" in byol_row  # 100/80
    assert "400 s" in byol_row and "2.50×" in byol_row  # 80·5 s; 1000/400
    assert "| simclr | 50.00 |" in simclr_row and "50.0 ep" in simclr_row and "2.00×" in simclr_row


def test_an_initial_evaluation_never_counts_as_reaching_the_baseline(tmp_path: Path) -> None:
    """An epoch-0 record (eval.at_start) measures the initialisation: a variant whose random features already beat a
    baseline that learned nothing reaches it at its first trained evaluation, not at epoch 0."""
    make_run(tmp_path, "base", [], 0, lambda e: 30.0, 1.0)  # flat at 30
    rot = make_run(tmp_path, "rot", ["rotation"], 0, lambda e: 31.0, 1.0)
    initial = {"kind": "eval", "epoch": 0, "step": 0, "images_seen": 0, "train_time_s": 0.0, "knn/top1": 31.0}
    metrics = rot / "metrics.jsonl"
    metrics.write_text(json.dumps(initial) + "\n" + metrics.read_text())  # logged first, as the trainer does
    md = write_report([tmp_path], tmp_path / "out").markdown.read_text()
    assert "10.0 ep" in md and "10.00×" in md  # reached at epoch 10 (the first trained evaluation): 100/10


def test_report_refuses_to_mix_protocols(runs: Path, tmp_path: Path) -> None:
    other = {**EVALUATION, "knn": {"k": 20, "temperature": 0.07}}
    make_run(runs, "other", [], 2, lambda e: e * 0.8, 10.0, evaluation=other)
    with pytest.raises(ValueError, match=r"evaluated differently.*knn\.k: .*other=20"):
        write_report([runs], tmp_path / "report")


def test_a_setting_older_runs_did_not_record_is_compared_among_the_runs_that_do(runs: Path, tmp_path: Path) -> None:
    """``data.split`` joined run.json after the first studies: runs without it still compare with runs that
    have it, while two runs recording different values are refused."""
    split = {**EVALUATION, "data": {**EVALUATION["data"], "split": "labelled: 10 classes"}}
    make_run(runs, "newer", [], 2, lambda e: e * 0.8, 10.0, evaluation=split)
    write_report([runs], tmp_path / "report")  # the fixture's runs lack the field
    other = {**EVALUATION, "data": {**EVALUATION["data"], "split": "labelled: 5 classes"}}
    make_run(runs, "other", [], 3, lambda e: e * 0.8, 10.0, evaluation=other)
    with pytest.raises(ValueError, match=r"data\.split: newer='labelled: 10 classes', other='labelled: 5 classes'"):
        write_report([runs], tmp_path / "report2")


@pytest.mark.parametrize("field, value", [("image_size", 16), ("bank_size", 2000), ("test_size", 500)])
def test_report_refuses_runs_evaluated_on_different_data(runs: Path, tmp_path: Path, field: str, value: int) -> None:
    make_run(runs, "other", [], 2, lambda e: e * 0.8, 10.0,
             evaluation={**EVALUATION, "data": {**EVALUATION["data"], field: value}})
    with pytest.raises(ValueError, match=rf"data\.{field}: .*other={value}"):
        write_report([runs], tmp_path / "report")


def test_report_refuses_two_runs_of_one_seed(runs: Path, tmp_path: Path) -> None:
    make_run(runs, "byol-s0-again", [], 0, lambda e: 41 + 0.4 * e, 10.0)
    with pytest.raises(ValueError, match="both seed 0 of byol"):
        write_report([runs], tmp_path / "report")


def test_report_compares_runs_on_the_evaluators_they_share(runs: Path, tmp_path: Path) -> None:
    with_linear = {**EVALUATION, "linear": {"epochs": 100, "lr": 0.1}}
    make_run(runs, "byol-s2", [], 2, lambda e: 41 + 0.4 * e, 10.0, evaluation=with_linear, linear=85.0)
    md = write_report([runs], tmp_path / "report").markdown.read_text()
    assert "not compared**: linear" in md and "linear/top1" not in md
    assert "knn/top1" in md and "training budget** (every run): epochs 100, batch_size 256" in md


def test_report_needs_run_directories(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no run directory"):
        write_report([tmp_path], tmp_path / "out")


def test_metrics_log_records_and_survives_a_torn_line(tmp_path: Path) -> None:
    log = MetricsLog(tmp_path)
    log.append("eval", epoch=1, step=10, images_seen=100, train_time_s=1.5, **{"knn/top1": 50.0})
    log.append("train", epoch=1, step=10, images_seen=100, train_time_s=1.5, loss=float("nan"))
    with (tmp_path / "metrics.jsonl").open("a") as f:
        f.write('{"kind": "eval", "epo')  # a crash mid-write
    records = read_metrics(tmp_path)
    assert len(records) == 2 and records[0]["knn/top1"] == 50.0 and records[1]["loss"] is None
    assert read_metrics(tmp_path, "eval") == [records[0]]
    log.truncate_after(5)
    assert read_metrics(tmp_path) == []
    assert json.loads((tmp_path / "metrics.jsonl").read_text() or "[]") == []


def test_train_clock_excludes_paused_time() -> None:
    clock = TrainClock()
    clock.start()
    time.sleep(0.05)
    with clock.paused():
        time.sleep(0.2)
    time.sleep(0.05)
    clock.stop()
    assert 0.09 <= clock.elapsed < 0.2


def test_train_clock_cpu_time_counts_work_not_waiting() -> None:
    """Sleeping (as when another process holds the core) stretches the wall-clock, not the CPU time; paused
    spans count in neither; a resumed clock continues from both saved totals."""
    clock = TrainClock(elapsed=10.0, cpu_elapsed=5.0)
    clock.start()
    deadline = time.process_time() + 0.1
    while time.process_time() < deadline:  # busy: CPU time advances with the wall-clock
        pass
    time.sleep(0.2)  # waiting: only the wall-clock advances
    with clock.paused():
        deadline = time.process_time() + 0.1
        while time.process_time() < deadline:
            pass
    clock.stop()
    assert 10.3 <= clock.elapsed < 11.5  # loose above: a loaded machine can deschedule the busy loop
    assert 5.09 <= clock.cpu_elapsed < 5.17
