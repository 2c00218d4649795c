"""Linear probes on every projector layer (FFCV-SSL's per-layer evaluation): layers, features and accuracies
against hand-built projectors whose information content is known."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from auxssl.cli import main
from auxssl.config import load_config
from auxssl.engine.trainer import train
from auxssl.eval.linear import ProbeConfig
from auxssl.eval.projector import layer_features, projector_layers, projector_probes
from auxssl.eval.report import write_report
from baselines.heads import mlp
from tests.auxssl.engine.test_trainer import tiny


def test_layers_end_after_each_hidden_activation_and_at_the_output() -> None:
    projector = mlp([8, 16, 16, 4], last_norm="bn")  # Linear BN ReLU Linear BN ReLU Linear BN
    prefixes = projector_layers(projector)
    assert [len(p) for p in prefixes] == [3, 6, 8]
    x = torch.randn(10, 8)
    outputs = layer_features(projector, x)
    assert [tuple(o.shape) for o in outputs] == [(10, 8), (10, 16), (10, 16), (10, 4)]


def test_a_projector_built_of_blocks_is_probed_after_each_block_as_ffcv_ssl_does() -> None:
    """FFCV-SSL builds its projector as one ``Sequential(Linear, BN, ReLU)`` block per hidden layer and a final
    Linear, and probes the representation and every block's output (``LinearsProbes``); a user's method laid out
    that way gets the same layers as the flat layout, in one pass."""
    torch.manual_seed(0)
    hidden = [nn.Sequential(nn.Linear(i, o), nn.BatchNorm1d(o), nn.ReLU()) for i, o in ((8, 16), (16, 12))]
    blocks = nn.Sequential(*hidden, nn.Linear(12, 4))
    x = torch.randn(10, 8)
    blocks.eval()
    expected, y = [x], x
    for block in blocks:  # FFCV-SSL's rule: the output of every top-level block
        y = block(y)
        expected.append(y)
    blocks.train()
    got = layer_features(blocks, x, batch=3)  # chunks of 3: concatenated back in order
    assert len(got) == 4
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e)
    from auxssl.eval.projector import OnlineProjectorProbes

    assert [p.head[1].in_features for p in OnlineProjectorProbes(blocks, 3).probes] == [16, 12, 4]


def test_layer_features_use_running_statistics_and_leave_them_and_the_mode_alone() -> None:
    torch.manual_seed(0)
    projector = mlp([8, 16, 4]).train()
    projector[1].running_mean.fill_(0.5)
    before = projector[1].running_mean.clone()
    x = torch.randn(12, 8)
    got = layer_features(projector, x)[1]
    norm = projector[1]
    expected = torch.relu((projector[0](x) - norm.running_mean) / (norm.running_var + norm.eps).sqrt() * norm.weight
                          + norm.bias)
    torch.testing.assert_close(got, expected)
    assert projector.training and torch.equal(projector[1].running_mean, before)


def test_a_layer_that_discards_the_classes_probes_at_chance_and_the_backbone_does_not() -> None:
    """Layer 0 (separable clusters) is probed near 100 %; a first layer with zero weights maps every sample to one
    point, so its probe (and every later layer's) can do no better than the majority class."""
    g = torch.Generator().manual_seed(0)
    centres = 4 * torch.randn(4, 8, generator=g)
    labels = torch.arange(400) % 4
    features = centres[labels] + 0.3 * torch.randn(400, 8, generator=g)
    projector = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    nn.init.zeros_(projector[0].weight)
    results = projector_probes(projector, features[:300], labels[:300], features[300:], labels[300:],
                               ProbeConfig(epochs=30))
    assert set(results) >= {"linear/layer0/top1", "linear/layer1/top1", "linear/layer2/top1"}
    assert results["linear/layer0/top1"] > 95
    majority = 100 * float((labels[300:] == labels[300:].mode().values).float().mean())
    assert results["linear/layer1/top1"] <= majority + 1e-6 and results["linear/layer2/top1"] <= majority + 1e-6


def test_a_run_reports_every_layer_in_its_metrics_run_json_and_report(tmp_path: Path) -> None:
    config = load_config(None, tiny(tmp_path, "layers", "eval.linear=true", "eval.projector_probes=true",
                                    "train.epochs=1"))
    final = train(config)
    assert {"linear/top1", "linear/layer0/top1", "linear/layer1/top1", "linear/layer2/top1"} <= set(final)
    assert abs(final["linear/layer0/top1"] - final["linear/top1"]) < 1e-9  # layer 0 is the standard probe
    info = json.loads((config.run_dir / "run.json").read_text())
    assert info["evaluation"]["projector_layers"]["layers"] == 3 and "projector" in info["protocol"]["projector_layers"]
    report = write_report([config.run_dir], tmp_path / "report")
    assert "linear/layer2/top1" in (tmp_path / "report" / "report.md").read_text(), report
    out = tmp_path / "offline.json"
    assert main(["eval", str(config.run_dir), "--projector-probes", "--probe-epochs", "2", "--out", str(out)]) == 0
    offline = json.loads(out.read_text())
    assert {"linear/layer0/top1", "linear/layer2/top1"} <= set(offline) and "projector_layers" in offline["protocol"]


def test_an_exported_backbone_has_no_projector_to_probe(tmp_path: Path) -> None:
    weights = tmp_path / "backbone.pt"
    torch.save(nn.Linear(2, 2).state_dict(), weights)
    from auxssl.eval.projector import load_projector

    with pytest.raises(Exception, match="not a training checkpoint"):
        load_projector(weights)
