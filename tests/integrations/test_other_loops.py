"""The auxiliary tasks in other libraries' loops: the examples run (lightly + plain PyTorch, lightly + Lightning,
plain PyTorch alone), and a Lightning run is read by ``auxssl report`` next to an auxssl-engine run of the same
evaluation settings, with evaluation time excluded from its training clock."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TINY = ["--epochs", "2", "--batch-size", "32", "--train-subset", "64", "--test-subset", "64"]


def test_lightly_byol_with_rotation_in_a_plain_loop(load_script) -> None:
    pytest.importorskip("lightly")
    results = load_script("examples/lightly_byol_rotation.py").main(TINY)
    assert set(results) == {"knn/top1", "knn/top5"} and 0 <= results["knn/top1"] <= 100


def test_plain_pytorch_loop_without_an_ssl_library() -> None:
    run = subprocess.run([sys.executable, str(ROOT / "examples" / "plain_rotation.py"), "--steps", "2",
                          "--batch-size", "8"], capture_output=True, text=True, timeout=300, check=False)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "rotation accuracy" in run.stdout


def test_a_lightning_run_is_reported_next_to_an_engine_run(tmp_path: Path, load_script) -> None:
    pytest.importorskip("lightly")
    pytest.importorskip("lightning")
    from auxssl.cli import main as auxssl
    from auxssl.eval.report import load_runs, write_report
    from auxssl.eval.tracker import read_metrics, read_run_info

    lightning_example = load_script("examples/lightning_byol_rotation.py")
    for variant in ([], ["--no-rotation"]):
        lightning_example.main(["--output-dir", str(tmp_path / "lightning"), "--knn-every", "1", *TINY, *variant])
    assert auxssl(["train", "byol_cifar10", "--output-dir", str(tmp_path / "engine"), "--name", "engine",
                   *(a for s in ("data.dataset=digits", "data.train_subset=64", "eval.test_subset=64",
                                 "train.epochs=1", "data.batch_size=32", "eval.every_epochs=1", "eval.linear=false",
                                 "train.progress=false", "model.width=16") for a in ("--set", s))]) == 0
    rotation = tmp_path / "lightning" / "lightly_byol+rotation-s0"
    info = read_run_info(rotation)
    assert (info.method, info.tasks) == ("lightly_byol", ["rotation"])
    assert info.evaluation["data"] == read_run_info(tmp_path / "engine" / "engine").evaluation["data"]
    evals, train = read_metrics(rotation, "eval"), read_metrics(rotation, "train")
    assert [e["epoch"] for e in evals] == [0, 1, 2] and evals[0]["train_time_s"] == 0.0
    assert {"loss", "loss/base", "loss/rotation", "acc/rotation", "images_per_s"} <= set(train[-1])
    # an evaluation is not training time: its record reads the clock where the last training record left it
    assert evals[-1]["train_time_s"] == pytest.approx(train[-1]["train_time_s"], abs=0.05)
    runs = load_runs([tmp_path / "lightning", tmp_path / "engine"])  # comparable: evaluated alike
    report = write_report([tmp_path / "lightning", tmp_path / "engine"], tmp_path / "report")
    text = report.markdown.read_text()
    assert len(runs) == 3 and "| lightly_byol+rotation | lightly_byol |" in text
    assert json.loads((rotation / "run.json").read_text())["budget"]["steps_per_epoch"] == 2


def test_a_lightning_run_under_torchrun_records_once_and_evaluates_like_one_process(tmp_path: Path,
                                                                                  load_script) -> None:
    """Two gloo processes (Lightning's DDP under torchrun): every rank evaluates its shard of the kNN, rank 0 alone
    writes the run, and the random initialisation's kNN (seeded alike) equals the one-process run's."""
    pytest.importorskip("lightly")
    pytest.importorskip("lightning")
    from auxssl.eval.tracker import read_metrics, read_run_info

    args = ["--epochs", "1", "--batch-size", "16", "--train-subset", "64", "--test-subset", "64", "--knn-every", "1"]
    load_script("examples/lightning_byol_rotation.py").main(["--output-dir", str(tmp_path / "one"), *args])
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          str(ROOT / "examples" / "lightning_byol_rotation.py"), "--devices", "2",
                          "--output-dir", str(tmp_path / "ddp"), *args],
                         capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"},
                         check=False)
    assert run.returncode == 0, run.stderr[-3000:]
    one, ddp = tmp_path / "one" / "lightly_byol+rotation-s0", tmp_path / "ddp" / "lightly_byol+rotation-s0"
    evals = read_metrics(ddp, "eval")
    assert [e["epoch"] for e in evals] == [0, 1]  # written once, by rank 0
    assert evals[0]["knn/top1"] == read_metrics(one, "eval")[0]["knn/top1"]
    assert read_run_info(ddp).budget["world_size"] == 2
    assert evals[-1]["images_seen"] == 64 and evals[-1]["step"] == 2  # 2 steps of 2 × 16 images


def test_the_recorder_resumes_where_its_checkpoint_left_it(tmp_path: Path) -> None:
    pytest.importorskip("lightning")
    from auxssl.integrations.lightning import RunRecorder

    recorder = RunRecorder(tmp_path / "run", method="m")
    recorder.step, recorder.images_seen = 7, 224
    state = recorder.state_dict()
    resumed = RunRecorder(tmp_path / "run", method="m")
    resumed.load_state_dict(state)
    assert (resumed.step, resumed.images_seen, resumed.clock.elapsed) == (7, 224, state["train_time_s"])


def test_the_readme_shows_the_lines_the_lightly_example_runs() -> None:
    """The README's lightly snippet is line for line what examples/lightly_byol_rotation.py (run above) adds."""
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Add rotation to your existing training loop"):]
    snippet = section[section.index("```python\n") + 10 : section.index("```", section.index("```python\n") + 10)]
    lines = [line for line in snippet.splitlines() if line.strip()]
    assert len(lines) == 3
    example = {line.strip() for line in (ROOT / "examples" / "lightly_byol_rotation.py").read_text().splitlines()}
    assert all(line.strip() in example for line in lines)


def test_seed_per_rank_gives_every_ddp_rank_its_own_rotation_labels_from_the_same_weights(tmp_path: Path) -> None:
    """Lightning's seed_everything seeds both gloo ranks alike, so they draw the same rotation labels for their
    different images; with `SeedPerRank` they differ, start from the same (DDP-synchronised) weights, and rank
    0 draws what a one-process run draws."""
    pytest.importorskip("lightning")

    def launch(name: str, processes: int, *flags: str) -> list[dict]:
        out = tmp_path / name
        out.mkdir()
        run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                              f"--nproc_per_node={processes}", str(ROOT / "tests" / "integrations" /
                                                                   "lightning_rank_streams.py"),
                              str(out), "--devices", str(processes), *flags],
                             capture_output=True, text=True, timeout=300,
                             env={**os.environ, "OMP_NUM_THREADS": "1"}, check=False)
        assert run.returncode == 0, run.stderr[-3000:]
        return [json.loads((out / f"rank{r}.json").read_text()) for r in range(processes)]

    alike = launch("alike", 2)
    own = launch("own", 2, "--per-rank-seed")
    (one,) = launch("one", 1, "--per-rank-seed")
    assert len(own[0]["labels"]) == 2 * 2 and alike[0]["labels"] == alike[1]["labels"]  # 2 steps, 2 views each
    assert own[0]["labels"] != own[1]["labels"]
    assert own[0]["weight"] == own[1]["weight"] == one["weight"] == alike[0]["weight"]
    assert one["labels"][:len(own[0]["labels"])] == own[0]["labels"]
