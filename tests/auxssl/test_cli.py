"""The command line end to end: offline evaluation of an exported backbone, and the report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from auxssl.cli import main
from auxssl.eval import MetricsLog, RunInfo, write_run_info
from auxssl.eval.offline import load_backbone
from baselines import build_backbone


def test_eval_reports_knn_of_an_exported_backbone(tmp_path: Path, capsys) -> None:
    torch.manual_seed(0)
    weights = tmp_path / "backbone.pt"
    torch.save(build_backbone("resnet18", cifar_stem=True).state_dict(), weights)
    out = tmp_path / "eval.json"
    assert main(["eval", str(weights), "--dataset", "digits", "--linear", "--probe-epochs", "2",
                 "--out", str(out)]) == 0
    results = json.loads(out.read_text())
    assert 10.0 < results["knn/top1"] <= 100.0 and 0.0 <= results["linear/top1"] <= 100.0
    assert "k=200, T=0.1" in results["protocol"]["knn"]
    assert json.loads(capsys.readouterr().out)["knn/top1"] == results["knn/top1"]


def test_eval_trains_the_augmented_linear_probe_when_asked(tmp_path: Path) -> None:
    """``--linear-augmented`` reaches the paper's protocol (`linear_probe_augmented`, advertised and unreachable
    before): fresh crops and flips every epoch through the frozen backbone, well above chance on digits."""
    torch.manual_seed(0)
    weights = tmp_path / "backbone.pt"
    torch.save(build_backbone("resnet10", cifar_stem=True, width=16).state_dict(), weights)
    out = tmp_path / "eval.json"
    assert main(["eval", str(weights), "--backbone", "resnet10", "--width", "16", "--dataset", "digits",
                 "--image-size", "16", "--linear-augmented", "--probe-epochs", "3", "--out", str(out)]) == 0
    results = json.loads(out.read_text())
    assert results["linear_aug/top1"] > 30.0  # chance: 10
    assert "fresh random-resized crops" in results["protocol"]["linear_aug"]


def test_load_backbone_rejects_weights_of_another_architecture(tmp_path: Path) -> None:
    weights = tmp_path / "r18.pt"
    torch.save({"backbone": build_backbone("resnet18").state_dict()}, weights)
    assert load_backbone(weights, "resnet18", cifar_stem=False) is not None  # training-checkpoint layout
    with pytest.raises(ValueError, match="does not hold resnet50"):
        load_backbone(weights, "resnet50")


def test_report_command_writes_html(tmp_path: Path, capsys) -> None:
    for name, tasks in (("base", []), ("aux", ["rotation"])):
        run = tmp_path / "runs" / name
        write_run_info(run, RunInfo(name, "simclr", "digits", tasks, protocol={"kNN": "k=200"}))
        log = MetricsLog(run)
        for epoch in (1, 2):
            log.append("eval", epoch=epoch, step=epoch, images_seen=epoch, train_time_s=epoch,
                       **{"knn/top1": 50.0 + 10 * epoch * (2 if tasks else 1)})
    assert main(["report", str(tmp_path / "runs"), "--out", str(tmp_path / "report")]) == 0
    assert "report.html" in capsys.readouterr().out
    md = (tmp_path / "report" / "report.md").read_text()
    assert "simclr+rotation" in md and "2.00×" in md  # baseline's 70.0 reached at epoch 1 of 2


def test_eval_saves_the_semisupervised_subset_and_evaluates_at_the_given_size(tmp_path: Path) -> None:
    torch.manual_seed(0)
    weights = tmp_path / "backbone.pt"
    torch.save(build_backbone("resnet10", cifar_stem=True).state_dict(), weights)
    out = tmp_path / "eval.json"
    assert main(["eval", str(weights), "--backbone", "resnet10", "--dataset", "digits", "--image-size", "16",
                 "--semisup", "0.1", "--out", str(out)]) == 0
    results = json.loads(out.read_text())
    subset = results["semisup"]["10pct"]["subset_indices"]
    assert len(subset) == 140 and len(set(subset)) == 140
    assert results["semisup"]["10pct"]["config"]["epochs"] == 30 and results["config"]["image_size"] == 16
    assert "16 px" in results["protocol"]["data"] and 0.0 <= results["semisup_10pct/top1"] <= 100.0
