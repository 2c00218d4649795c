"""Config validation, schedules against their formulas, LARS against its update rule."""

from __future__ import annotations

import math

import pytest
import torch
import yaml

from auxssl.config import ConfigError, RunConfig, load_config, save_config
from auxssl.engine.optim import LARS, build_optimizer
from auxssl.engine.schedules import ema_schedule, warmup_cosine


def test_unknown_keys_name_the_key_valid_keys_and_closest_match(tmp_path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("model:\n  methd: byol\n")
    with pytest.raises(ConfigError, match=r"'model\.methd'.*did you mean 'method'.*valid keys: backbone"):
        load_config(path)
    with pytest.raises(ConfigError, match="did you mean 'optim'"):
        load_config(None, ["optimm.lr=0.1"])


def test_wrong_values_fail_before_training() -> None:
    with pytest.raises(ConfigError, match="train.epochs: expected int"):
        load_config(None, ["train.epochs=ten"])
    with pytest.raises(ConfigError, match="did you mean 'simclr'"):
        load_config(None, ["model.method=simcrl"])
    with pytest.raises(ConfigError, match="does not exist"):
        load_config("nowhere.yaml")
    with pytest.raises(ConfigError, match="key.subkey=value"):
        load_config(None, ["train.epochs"])


def test_overrides_and_round_trip(tmp_path) -> None:
    config = load_config(None, ["tasks=[{name: rotation, weight: 0.2, args: {mode: all}}]", "optim.betas=[0.9, 0.95]",
                                "data.train_subset=100", "train.epochs=3"])
    assert config.tasks[0].weight == 0.2 and config.tasks[0].args == {"mode": "all"}
    assert config.optim.betas == (0.9, 0.95) and config.data.train_subset == 100
    save_config(config, tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml") == config
    assert yaml.safe_load((tmp_path / "config.yaml").read_text())["train"]["epochs"] == 3
    assert load_config() == RunConfig()


def test_every_shipped_config_is_valid() -> None:
    from pathlib import Path

    configs = sorted((Path(__file__).parents[3] / "experiments" / "configs").glob("*.yaml"))
    assert len(configs) >= 14
    for path in configs:
        load_config(path)


def test_warmup_cosine_matches_formula() -> None:
    lr = warmup_cosine(0.4, total_steps=110, warmup_steps=10, final=0.01)
    assert len(lr) == 110
    assert lr[0] == pytest.approx(0.04) and lr[9] == pytest.approx(0.4)
    for k in (10, 35, 60, 109):
        expected = 0.01 + 0.5 * (0.4 - 0.01) * (1 + math.cos(math.pi * (k - 10) / 100))
        assert lr[k] == pytest.approx(expected)


def test_ema_schedule_matches_byol_formula() -> None:
    taus = ema_schedule(0.996, 50)
    for k in (0, 13, 49):
        assert taus[k] == pytest.approx(1 - (1 - 0.996) * (math.cos(math.pi * k / 50) + 1) / 2)


def test_lars_update_matches_formula() -> None:
    w = torch.nn.Parameter(torch.tensor([3.0, 4.0]))  # ‖w‖ = 5
    b = torch.nn.Parameter(torch.tensor([1.0]))
    opt = LARS([{"params": [w]}, {"params": [b], "weight_decay": 0.0, "lars_exclude": True}],
               lr=0.1, momentum=0.9, weight_decay=0.5, eta=0.02)
    w.grad, b.grad = torch.tensor([0.5, -1.0]), torch.tensor([2.0])
    opt.step()
    g = torch.tensor([0.5, -1.0]) + 0.5 * torch.tensor([3.0, 4.0])  # [2, 1], ‖g‖ = √5
    update = g * 0.02 * 5 / math.sqrt(5)
    torch.testing.assert_close(w.detach(), torch.tensor([3.0, 4.0]) - 0.1 * update)
    torch.testing.assert_close(b.detach(), torch.tensor([1.0 - 0.1 * 2.0]))  # excluded: plain SGD
    # second step: heavy-ball momentum on the adapted gradient
    w_before = w.detach().clone()
    w.grad, b.grad = torch.tensor([0.0, 0.0]), torch.tensor([0.0])
    opt.step()
    g2 = 0.5 * w_before
    v2 = 0.9 * update + g2 * 0.02 * w_before.norm() / g2.norm()
    torch.testing.assert_close(w.detach(), w_before - 0.1 * v2)


def test_build_optimizer_keeps_group_weight_decay() -> None:
    layer = torch.nn.Linear(3, 2)
    groups = [{"params": [layer.weight]}, {"params": [layer.bias], "weight_decay": 0.0, "lars_exclude": True}]
    for name in ("sgd", "lars", "adamw"):
        opt = build_optimizer(groups, name, lr=0.1, weight_decay=1e-4, momentum=0.9)
        assert [g["weight_decay"] for g in opt.param_groups] == [1e-4, 0.0]
    with pytest.raises(ValueError, match="unknown optimiser"):
        build_optimizer(groups, "adam", lr=0.1, weight_decay=0.0, momentum=0.9)
