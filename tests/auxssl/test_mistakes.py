"""What a new user meets: every expected mistake ends in one line (``auxssl: error: …``, exit 2) before training,
corrupt files are counted once per run, offline downloads say what to do, and `auxssl eval` defaults to the run's own
evaluation protocol."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from auxssl.cli import main
from auxssl.config import ConfigError, load_config
from auxssl.engine.checkpoint import find_last_checkpoint
from auxssl.eval import MetricsLog, RunInfo, write_run_info
from auxssl.eval.tracker import read_metrics

ROOT = Path(__file__).resolve().parents[2]


def tiny_digits(tmp_path: Path, name: str, *extra: str) -> list[str]:
    """A 1-epoch SimCLR + rotation run on 128 digits at 16 px (the quickstart's resolution)."""
    sets = [f"name={name}", f"output_dir={tmp_path}", "data.dataset=digits", "data.image_size=16",
            "data.batch_size=32", "data.train_subset=128", "model.backbone=resnet10", "model.width=16",
            "model.method=simclr", "model.method_args={proj_hidden_dim: 64, proj_dim: 32}",
            "tasks=[{name: rotation}]", "train.epochs=1", "train.precision=fp32", "train.progress=false",
            "optim.warmup_epochs=0", "eval.every_epochs=1", "eval.knn_k=20", "data.num_workers=0", *extra]
    return ["train", "simclr_cifar10", *(a for s in sets for a in ("--set", s))]


def error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert err and err[-1].startswith("auxssl: error: ") and "Traceback" not in "\n".join(err), err
    return err[-1]


# ------------------------------------------------------------------------------------------------ eval defaults
def test_eval_defaults_to_the_runs_own_resolution_and_records_the_architecture(tmp_path: Path, capsys) -> None:
    assert main(tiny_digits(tmp_path, "run")) == 0
    trained = read_metrics(tmp_path / "run", "eval")[-1]["knn/top1"]
    checkpoint = find_last_checkpoint(tmp_path / "run")
    capsys.readouterr()
    assert main(["eval", str(checkpoint)]) == 0  # no --dataset, no --image-size, no --backbone, no --k
    out = json.loads(capsys.readouterr().out)
    assert out["knn/top1"] == trained  # before: 32 px, cifar10_jpg and k = 200, another number
    assert out["config"]["knn"] == {"k": 20, "temperature": 0.1}  # the run's eval.knn_k
    from auxssl.eval.offline import load_backbone

    assert load_backbone(tmp_path / "run")[1]["width"] == 16  # a run directory: its last checkpoint (benchmarks)
    assert out["config"]["image_size"] == 16 and out["config"]["backbone"] == "resnet10"
    assert out["config"]["width"] == 16 and out["config"]["dataset"] == "digits"
    # exported weights carry the same settings: eval needs no --backbone/--width either
    assert main(["export", str(tmp_path / "run"), "--out", str(tmp_path / "r10.pt")]) == 0
    assert json.loads((tmp_path / "r10.json").read_text())["image_size"] == 16
    capsys.readouterr()
    assert main(["eval", str(tmp_path / "r10.pt")]) == 0
    assert json.loads(capsys.readouterr().out)["knn/top1"] == trained


def test_eval_of_a_folder_whose_first_file_is_corrupt(tmp_path: Path, capsys) -> None:
    rng = np.random.default_rng(0)
    for split, count in (("train", 6), ("test", 4)):
        for c in ("a", "b"):
            for i in range(count):
                path = tmp_path / "data" / split / c / f"{i}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)).save(path)
    (tmp_path / "data" / "train" / "a" / "0.png").write_bytes(b"broken")  # the first file of the folder
    import torch

    from baselines import build_backbone

    torch.save(build_backbone("resnet10", cifar_stem=True, width=16).state_dict(), tmp_path / "w.pt")
    args = ["eval", str(tmp_path / "w.pt"), "--backbone", "resnet10", "--width", "16", "--dataset", "folder",
            "--root", str(tmp_path / "data"), "--k", "3"]
    assert main(args) == 0  # today's code: a CorruptImageError traceback
    out = json.loads(capsys.readouterr().out)
    assert out["config"]["image_size"] == 12 and "bank: 11 training images" in out["protocol"]["data"]


# ------------------------------------------------------------------------------------------------ corrupt files
def test_corrupt_files_are_one_line_per_run_and_recorded(tmp_path: Path, caplog) -> None:
    rng = np.random.default_rng(0)
    root = tmp_path / "pets"
    for c in ("cat", "dog"):
        for i in range(12):
            (root / c).mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (10, 10, 3), dtype=np.uint8)).save(root / c / f"{i}.png")
    (root / "cat" / "bad.jpg").write_bytes(b"nope")
    whole = (root / "dog" / "0.png").read_bytes()
    (root / "dog" / "cut.png").write_bytes(whole[:-30])  # header fine, pixels truncated
    sets = [f"data.root={root}", "data.image_size=8", "data.batch_size=8", "data.num_workers=0",
            "model.backbone=resnet10", "model.width=16", "model.cifar_stem=true", "train.epochs=1",
            "train.precision=fp32", "train.progress=false", "optim.warmup_epochs=0", "eval.knn_k=3",
            "model.method_args={proj_hidden_dim: 32, proj_dim: 16}", "data.backend=tensor"]
    for attempt in ("first", "cached"):  # the second run reads the decoded cache and must still say it
        caplog.clear()
        with warnings.catch_warnings(record=True) as raw, caplog.at_level("WARNING", logger="auxssl"):
            warnings.simplefilter("always")
            assert main(["train", "own_folder", "--output-dir", str(tmp_path / "runs"), "--name", attempt,
                         *(a for s in sets for a in ("--set", s))]) == 0
        assert not [w for w in raw if "skipping" in str(w.message)]
        lines = [r.getMessage() for r in caplog.records if "unreadable" in r.getMessage()]
        run = tmp_path / "runs" / attempt
        listing = run / "skipped_images.txt"
        assert lines == [f"skipped 2 unreadable images (not trained or evaluated on): listed in {listing}"]
        listed = sorted(Path(p).name for p in (run / "skipped_images.txt").read_text().splitlines())
        assert listed == ["bad.jpg", "cut.png"]
        assert json.loads((run / "run.json").read_text())["budget"]["skipped_images"] == 2


def test_the_batch_size_check_counts_readable_images(tmp_path: Path, capsys) -> None:
    root = tmp_path / "few"
    for i in range(5):
        (root / "x").mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((8, 8, 3), i, dtype=np.uint8)).save(root / f"{i}.png")
    for i in range(3):
        (root / f"bad{i}.jpg").write_bytes(b"x")
    assert main(["train", "own_folder", "--output-dir", str(tmp_path), "--set", f"data.root={root}",
                 "--set", "data.batch_size=6", "--set", "train.progress=false"]) == 2
    assert "data.batch_size=6 exceeds the 5 readable training images" in error_line(capsys)


# ------------------------------------------------------------------------------------------------ bad values
@pytest.mark.parametrize(("override", "message"), [
    ("data.image_size=0", "data.image_size=0 must be at least 1"),
    ("data.image_size=-32", "data.image_size=-32 must be at least 1"),
    ("eval.knn_k=0", "eval.knn_k=0 must be at least 1"),
    ("tasks=[{name: rotation, weight: -0.1}]", "tasks[0].weight=-0.1 must be at least 0"),
    ("data.batch_size=0", "data.batch_size=0 must be at least 2"),
    ("data.train_subset=0", "data.train_subset=0 must be at least 1"),
    ("optim.lr=-0.1", "optim.lr=-0.1 must be positive"),
    ("eval.knn_temperature=0", "eval.knn_temperature=0.0 must be positive"),
    ("optim.momentum=1.5", "optim.momentum=1.5 must lie in [0, 1)"),
    ("data.dataset=folder", "data.dataset=folder needs data.root"),
])
def test_invalid_values_are_refused_at_load(override: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(None, [override])
    assert str(caught.value).startswith(message)


def test_values_that_need_the_dataset_are_refused_before_training(tmp_path: Path, capsys) -> None:
    args = tiny_digits(tmp_path, "big", "data.train_subset=5000")
    assert main(args) == 2
    assert "data.train_subset=5000 exceeds the 1437 training images" in error_line(capsys)
    assert not (tmp_path / "big").exists()  # nothing was started


def test_report_and_export_refusals_are_one_line(tmp_path: Path, capsys) -> None:
    for name in ("a", "b"):  # two runs of one variant with the same seed
        write_run_info(tmp_path / "runs" / name, RunInfo(name, "simclr", "digits", [], seed=0))
        MetricsLog(tmp_path / "runs" / name).append("eval", epoch=1, step=1, images_seen=1, train_time_s=1.0,
                                                   **{"knn/top1": 50.0})
    assert main(["report", str(tmp_path / "runs")]) == 2
    assert "are both seed 0" in error_line(capsys)
    for text, says in (("{}", "missing ['name', 'method', 'dataset']"), ("[1]", "not a run description"),
                       ("{name: x", "not JSON")):  # a run.json not written by auxssl
        (tmp_path / "runs" / "b" / "run.json").write_text(text)
        assert main(["report", str(tmp_path / "runs")]) == 2
        assert says in error_line(capsys)
    import torch

    torch.save({"weight": torch.zeros(2)}, tmp_path / "plain.pt")
    assert main(["export", str(tmp_path / "plain.pt"), "--out", str(tmp_path / "x.pt")]) == 2
    assert "is not an auxssl training checkpoint" in error_line(capsys)


# ------------------------------------------------------------------------------------------------ offline
def test_offline_download_is_one_line_saying_what_to_do(tmp_path: Path, capsys, monkeypatch) -> None:
    import torchvision.datasets.cifar as cifar

    def no_network(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(cifar, "download_and_extract_archive", no_network)
    monkeypatch.setenv("AUXSSL_CACHE", str(tmp_path / "cache"))
    assert main(["train", "byol_cifar10", "--output-dir", str(tmp_path)]) == 2  # every shipped config downloads
    line = error_line(capsys)
    assert "cifar10 could not be downloaded" in line and "cifar-10-batches-py" in line and "cifar10_jpg" in line


def test_missing_jpeg_archive_says_how_to_build_one(tmp_path: Path, capsys, monkeypatch) -> None:
    import auxssl.data.datasets as datasets

    monkeypatch.setattr(datasets, "find_shared_cifar10_archive", lambda: None)
    assert main(["train", "byol_cifar10", "--output-dir", str(tmp_path), "--set", "data.dataset=cifar10_jpg"]) == 2
    assert "auxssl make-cifar10-jpg" in error_line(capsys)


def test_make_cifar10_jpg_writes_the_archive_layout(tmp_path: Path, monkeypatch) -> None:
    import auxssl.data.datasets as datasets

    rng = np.random.default_rng(0)
    fake = {split: datasets.ArrayDataset(rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8), np.arange(n) % 2,
                                         ["airplane", "automobile"], "cifar10")
            for split, n in (("train", 6), ("test", 4))}
    monkeypatch.setattr(datasets, "torchvision_dataset", lambda name, root, split, download: fake[split])
    assert main(["make-cifar10-jpg", str(tmp_path / "c.tar.gz")]) == 0
    train = datasets.cifar10_jpg("train", archive=tmp_path / "c.tar.gz", cache_dir=tmp_path / "cache")
    assert len(train) == 6 and train.classes == ["airplane", "automobile"] and train.uniform_size() == (32, 32)
    assert np.bincount(train.labels).tolist() == [3, 3]


# ------------------------------------------------------------------------------------------------ command line
def test_version_and_config_typos_answer_without_importing_torch() -> None:
    code = ("import sys; from auxssl.cli import main; "
            "rc = main(['train', 'byol_cifar10', '--set', 'train.epoch=3']); print(rc, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.split() == ["2", "False"] and "did you mean 'epochs'" in out.stderr


def test_print_config_and_configs_show(tmp_path: Path, capsys) -> None:
    assert main(["train", "own_folder", "--set", "data.root=/photos", "--print-config"]) == 0
    printed = capsys.readouterr().out
    assert "root: /photos" in printed and "image_size: 96" in printed and not (Path("runs") / "own_folder").exists()
    assert main(["configs", "show", "own_folder"]) == 0
    assert "data.root" in capsys.readouterr().out


@pytest.mark.parametrize("script", ["run_cifar.sh", "run_cifar10_cpu_study.sh", "run_noise_tables.sh"])
def test_experiment_scripts_have_a_usage_line_and_refuse_arguments(tmp_path: Path, script: str) -> None:
    path = ROOT / "experiments" / script
    shown = subprocess.run(["bash", str(path), "--help"], capture_output=True, text=True, cwd=tmp_path)
    assert shown.returncode == 0 and "Knobs" in shown.stdout and not (tmp_path / "runs").exists()
    refused = subprocess.run(["bash", str(path), "--epochs", "2"], capture_output=True, text=True, cwd=tmp_path)
    assert refused.returncode == 2 and "unknown argument '--epochs'" in refused.stderr


def test_the_study_script_turns_noise_arms_into_settings_and_refuses_bad_levels(tmp_path: Path) -> None:
    script = ROOT / "experiments" / "run_cifar10_cpu_study.sh"
    env = {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "DRY_RUN": "1", "SEEDS": "3",
           "ARMS": "simclr_rotation_fnpairs0.3@12 byol_good1"}
    shown = subprocess.run(["bash", str(script)], capture_output=True, text=True, cwd=tmp_path, env=env)
    first, second = shown.stdout.splitlines()
    assert shown.returncode == 0 and not (tmp_path / "runs").exists()
    assert "--name simclr_rotation_fnpairs0.3-e12-s3" in first and "noise.fn_elimination_mode=pairs" in first
    assert "noise.fn_elimination=0.3" in first and "tasks=\\[\\{name:\\ rotation\\}\\]" in first
    assert "--name byol_good1-s3" in second and "noise.good_crop_fraction=1" in second and "tasks=\\[\\]" in second
    refused = subprocess.run(["bash", str(script)], capture_output=True, text=True, cwd=tmp_path,
                             env=env | {"ARMS": "byol_good1.5"})
    assert refused.returncode == 2 and "noise level must be a fraction in (0, 1], got '1.5'" in refused.stderr


def test_the_study_script_probes_each_run_after_training_and_copies_its_records(tmp_path: Path) -> None:
    """One-epoch study runs on the digits: each run's offline linear probe is written right after its training
    (while the checkpoint exists; checkpoints do not outlive the machine), and the results folder gets the records
    of the finished runs only (another invocation's run in progress is left out), keeping those already there (a
    second invocation, e.g. from another machine's OUT, adds its run beside the first's)."""
    script = ROOT / "experiments" / "run_cifar10_cpu_study.sh"
    in_progress = tmp_path / "b" / "simclr-s9"  # its last evaluation (epoch 1) is before its last epoch (5)
    in_progress.mkdir(parents=True)
    (in_progress / "run.json").write_text("{}")
    (in_progress / "config.yaml").write_text("train: {epochs: 5}\n")
    (in_progress / "metrics.jsonl").write_text(json.dumps({"kind": "eval", "epoch": 1, "knn/top1": 30.0}) + "\n")
    tiny = ("data.dataset=digits data.train_subset=64 data.batch_size=32 data.image_size=16 model.width=8 "
            "eval.every_epochs=1 eval.at_start=false eval.knn_k=10")
    env = {**os.environ, "ARMS": "byol@1", "PARALLEL": "1", "THREADS": "1", "EXTRA": tiny,
           "RESULTS": str(tmp_path / "results")}
    for seed, out in (("0", "a"), ("1", "b")):
        done = subprocess.run(["bash", str(script)], capture_output=True, text=True, cwd=ROOT, timeout=600,
                              env=env | {"SEEDS": seed, "OUT": str(tmp_path / out)})
        assert done.returncode == 0, done.stderr[-2000:]
    results = tmp_path / "results" / "runs"
    assert {p.name for p in results.iterdir()} == {"byol-e1-s0", "byol-e1-s1"}
    for copied in results.iterdir():
        assert {p.name for p in copied.iterdir()} == {"config.yaml", "metrics.jsonl", "run.json", "probe.json"}
        probe = json.loads((copied / "probe.json").read_text())
        last = [json.loads(line) for line in (copied / "metrics.jsonl").read_text().splitlines()][-1]
        assert probe["checkpoint"].endswith(".pt") and 0 < probe["linear/top1"] <= 100
        assert probe["knn/top1"] == pytest.approx(last["knn/top1"], abs=1.0)  # the same final features, same k
