"""Evaluators as objects (`auxssl.eval.evaluators`) and the online probes on every projector layer: one list
drives the evaluation, run.json and the report; a user's own evaluator runs through `evaluate_backbone`; the
online per-layer probes learn what each layer keeps and never touch the projector."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from auxssl.config import load_config
from auxssl.engine.checkpoint import find_last_checkpoint, load_checkpoint
from auxssl.engine.trainer import Trainer
from auxssl.eval.evaluators import (
    EVALUATORS,
    Evaluator,
    Features,
    KNNEvaluator,
    LinearProbe,
    MLPProbe,
    ProjectorLayerProbes,
)
from auxssl.eval.knn import KNNProtocol
from auxssl.eval.linear import ProbeConfig
from auxssl.eval.offline import evaluate_backbone
from auxssl.eval.projector import OnlineProjectorProbes, layer_features
from auxssl.eval.report import EVALUATOR_PREFIXES, write_report
from baselines.heads import mlp
from tests.auxssl.engine.test_trainer import tiny


class NearestCentroid(Evaluator):
    """A user's own evaluator: nearest class mean of L2-normalised features."""

    name = "centroid"
    prefix = "centroid/"
    calls: list[Features] = []

    def settings(self) -> dict[str, Any]:
        return {"metric": "cosine"}

    def describe(self) -> str:
        return "nearest class centroid"

    def __call__(self, features: Features, group: Any = None) -> dict[str, float]:
        self.calls.append(features)
        train = nn.functional.normalize(features.train_x, dim=1)
        centroids = nn.functional.normalize(
            torch.stack([train[features.train_y == c].mean(0) for c in range(features.num_classes)]), dim=1)
        test = nn.functional.normalize(features.test_x, dim=1)
        predicted = (test @ centroids.T).argmax(1)
        return {"centroid/top1": 100 * float((predicted == features.test_y).float().mean())}


def test_probe_classes_refuse_the_other_kind_of_head() -> None:
    with pytest.raises(ValueError, match="MLPProbe"):
        LinearProbe(ProbeConfig(hidden_dim=8))
    with pytest.raises(ValueError, match="hidden_dim"):
        MLPProbe(ProbeConfig())


def test_a_list_of_evaluators_gives_what_the_keyword_form_gives_and_runs_ones_own(tiny_dataset_pair) -> None:
    """One feature extraction for every evaluator; the list form's kNN and probes equal the keyword form's, and a
    user-defined evaluator gets the same features the others do (checked against an independent centroid
    classifier computed here)."""
    torch.manual_seed(0)
    backbone, train_set, test_set = tiny_dataset_pair
    knn, probe = KNNProtocol(k=5, temperature=0.1), ProbeConfig(epochs=3)
    by_keyword = evaluate_backbone(backbone, train_set, test_set, knn=knn, linear=probe, precision="fp32")
    NearestCentroid.calls = []
    evaluators = [KNNEvaluator(knn), LinearProbe(probe), NearestCentroid()]
    by_list = evaluate_backbone(backbone, train_set, test_set, evaluators=evaluators, precision="fp32")
    assert {k: by_list[k] for k in by_keyword} == by_keyword
    (features,) = NearestCentroid.calls
    assert len(features.train_x) == len(train_set) and len(features.test_x) == len(test_set)
    unit = features.train_x / features.train_x.norm(dim=1, keepdim=True)
    means = torch.stack([unit[features.train_y == c].mean(0) for c in range(features.num_classes)])
    cosine = nn.functional.cosine_similarity(features.test_x[:, None], means[None], dim=2)
    expected = 100 * float((cosine.argmax(1) == features.test_y).float().mean())
    assert by_list["centroid/top1"] == pytest.approx(expected)


@pytest.fixture
def tiny_dataset_pair():
    from auxssl.data.datasets import get_dataset
    from auxssl.engine.build import random_subset
    from baselines import build_backbone

    train_set = random_subset(get_dataset("digits", "train"), 120)
    test_set = random_subset(get_dataset("digits", "test"), 60)
    torch.manual_seed(0)
    return build_backbone("resnet10", cifar_stem=True, width=8), train_set, test_set


def test_online_layer_probes_learn_what_each_layer_keeps_and_leave_the_projector_alone() -> None:
    """Separable clusters through a projector whose second block zeroes everything: the layer-1 probe learns the
    classes, the layer-2 and output probes stay at chance; the projector's weights, batch-norm statistics and mode
    are unchanged and it is not part of the probes' state."""
    g = torch.Generator().manual_seed(0)
    projector = mlp([8, 32, 32, 4]).train()  # Linear BN ReLU | Linear BN ReLU | Linear
    nn.init.zeros_(projector[3].weight)
    with torch.no_grad():
        projector[4].weight.zero_()
        projector[4].bias.zero_()
    before = {k: v.clone() for k, v in projector.state_dict().items()}
    probes = OnlineProjectorProbes(projector, num_classes=4)
    assert len(probes.probes) == 3 and not any(k.startswith("_projector") for k in probes.state_dict())
    assert [p.head[1].in_features for p in probes.probes] == [32, 32, 4]
    centres = 3 * torch.randn(4, 8, generator=g)
    for _ in range(150):
        labels = torch.randint(0, 4, (64,), generator=g)
        out = probes.update(centres[labels] + 0.3 * torch.randn(64, 8, generator=g), labels)
    assert out["online_linear/labelled"] == 64
    assert set(out) == {"online_linear/labelled", *(f"online_linear/layer{i}/{m}" for i in (1, 2, 3)
                                                  for m in ("loss", "top1"))}
    assert float(out["online_linear/layer1/top1"]) > 95
    assert float(out["online_linear/layer2/top1"]) < 50 and float(out["online_linear/layer3/top1"]) < 50
    assert projector.training
    for key, value in projector.state_dict().items():
        assert torch.equal(value, before[key]), key
    # the layer outputs the probes saw are the offline probes' (eval mode, running statistics)
    x = torch.randn(5, 8, generator=g)
    torch.testing.assert_close(layer_features(projector, x)[1], torch.relu(projector[:3].eval()(x)))


def test_online_layer_probes_refuse_a_checkpoint_of_another_projector() -> None:
    probes = OnlineProjectorProbes(mlp([8, 16, 4]), 3)
    with pytest.raises(ValueError, match="layers"):
        probes.load_checkpoint_state(OnlineProjectorProbes(mlp([8, 16, 16, 4]), 3).checkpoint_state())


def test_a_run_with_every_evaluator_describes_them_all_and_resumes_its_online_layer_probes(tmp_path: Path) -> None:
    config = load_config(None, tiny(tmp_path, "all", "eval.projector_probes=true",
                                    "eval.online_linear=true", "eval.online_projector_probes=true",
                                    "data.reveal_labels=1.0", "train.epochs=1"))
    trainer = Trainer(config)
    assert [type(e) for e in trainer.evaluators] == [KNNEvaluator, ProjectorLayerProbes]
    final = trainer.fit()
    assert {"knn/top1", "linear/layer0/top1", "linear/layer2/top1"} <= set(final)
    info = json.loads((config.run_dir / "run.json").read_text())
    assert set(info["protocol"]) == set(info["evaluation"]) == {
        "data", "knn", "projector_layers", "online_linear", "online_projector_layers"}
    assert info["evaluation"]["online_projector_layers"]["layers"] == 2  # BYOL's projector: hidden block, output
    assert info["evaluation"]["online_projector_layers"]["reveal_labels"] == 1.0
    # every metric the run logged belongs to an evaluator its run.json names (by the registry's prefixes)
    prefixes = tuple(EVALUATOR_PREFIXES[name] for name in info["evaluation"] if name != "data")
    metrics = {k for k in final if "/" in k}
    assert metrics and all(k.startswith(prefixes) for k in metrics)
    assert all(EVALUATORS[name].name == name for name in info["evaluation"] if name != "data")
    logs = [r for r in (json.loads(line) for line in (config.run_dir / "metrics.jsonl").read_text().splitlines())
            if r["kind"] == "train"]
    assert {"online_linear/top1", "online_linear/layer1/top1", "online_linear/layer2/top1"} <= set(logs[-1])
    state = load_checkpoint(find_last_checkpoint(config.run_dir))
    resumed = Trainer(config, resume=True)
    for saved, probe in zip(state["online_projector_probes"], resumed.online_probes.projector_layers.probes):
        for key, value in probe.state_dict().items():
            assert torch.equal(value, saved["head"][key]), key
        assert probe.optimizer.state_dict()["state"].keys() == saved["optimizer"]["state"].keys()
    report = (tmp_path / "report" / "report.md")
    write_report([config.run_dir], tmp_path / "report")
    assert "linear/layer2/top1" in report.read_text()


def test_online_projector_probes_need_labels_and_a_projector(tmp_path: Path) -> None:
    from auxssl.errors import UserError

    with pytest.raises(UserError, match="needs revealed labels"):
        Trainer(load_config(None, tiny(tmp_path, "a", "eval.online_projector_probes=true")))
    with pytest.raises(UserError, match="model.method=none"):
        load_config(None, tiny(tmp_path, "b", "eval.online_projector_probes=true", "model.method=none",
                               "data.reveal_labels=0.5"))


def test_a_knn_k_not_below_the_bank_is_said_before_training(tmp_path: Path) -> None:
    import logging

    from auxssl.engine.build import warn_if_knn_bank_too_small

    config = load_config(None, tiny(tmp_path, "k", "eval.knn_k=64"))
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append  # the CLI's console handler may stop propagation: listen on the logger itself
    logger = logging.getLogger("auxssl")
    logger.addHandler(handler)
    try:
        warn_if_knn_bank_too_small(config, 65)
        assert not records
        warn_if_knn_bank_too_small(config, 64)
    finally:
        logger.removeHandler(handler)
    assert "eval.knn_k=64 is not below the 64 images of the kNN bank" in records[0].getMessage()
