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


def test_every_shipped_and_experiment_config_is_valid_and_shipped_ones_load_by_name() -> None:
    from pathlib import Path

    from auxssl.config import shipped_configs, shipped_names

    assert len(shipped_configs()) == 8  # one file per method, and own_folder
    names = shipped_names()
    assert len(names) == 29 and "byol_rotation_cifar10" in names and "own_folder" in names
    for name in names:  # by name, from the package (own_folder needs the user's folder)
        assert load_config(name, ["data.root=/photos"] if name == "own_folder" else []).model.method
    with pytest.raises(ConfigError, match="data.dataset=folder needs data.root"):
        load_config("own_folder")
    for path in sorted((Path(__file__).parents[3] / "experiments" / "configs").glob("*.yaml")):
        load_config(path)
    with pytest.raises(ConfigError, match="did you mean .byol_rotation_cifar10."):
        load_config("byol_rotaton_cifar10")


def test_a_named_variant_is_its_method_file_with_rotation_and_the_dataset_set() -> None:
    """``swav_rotation_cifar100`` = ``swav_cifar10.yaml`` + rotation (λ 0.1) + CIFAR-100, named for itself; the
    user's own overrides still apply on top."""
    plain, variant = load_config("swav_cifar10"), load_config("swav_rotation_cifar100", ["train.epochs=3"])
    assert variant.name == "swav_rotation_cifar100" and variant.data.dataset == "cifar100"
    assert [(t.name, t.weight) for t in variant.tasks] == [("rotation", 0.1)] and plain.tasks == []
    assert variant.train.epochs == 3
    same = {k: v for k, v in vars(plain).items() if k not in ("name", "tasks", "data", "train")}
    assert same == {k: v for k, v in vars(variant).items() if k not in ("name", "tasks", "data", "train")}
    assert load_config("swav_cifar100").tasks == [] and load_config("swav_rotation_cifar10").data.dataset == "cifar10"


def test_list_indices_in_overrides_and_readable_yaml_errors(tmp_path) -> None:
    config = load_config("byol_rotation_cifar10", ["tasks.0.weight=0.2", "tasks.0.args={size: 16}"])
    assert config.tasks[0].weight == 0.2 and config.tasks[0].args == {"size": 16}
    with pytest.raises(ConfigError, match="not an index"):
        load_config("byol_rotation_cifar10", ["tasks.1.weight=0.2"])
    broken = tmp_path / "broken.yaml"
    broken.write_text("train:\n  epochs: 3\n  seed: [0\n")
    with pytest.raises(ConfigError, match=r"broken.yaml:\d+:\d+: YAML syntax error"):
        load_config(broken)


@pytest.mark.parametrize(
    ("override", "message"),
    [("train.log_every_steps=0", "log_every_steps=0 must be at least 1"),
     ("train.checkpoint_every_epochs=-1", "at least 0"),
     ("eval.every_epochs=-2", "0 means never"),
     ("data.recipe=swav_multicrop", "takes 2 views per image")],
)
def test_unusable_settings_are_refused_when_the_config_is_loaded(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(None, ["model.method=byol", override])


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


def solo_learn_lars_reference(params: list[list[float]], grads: list[list[list[float]]], exclude: list[bool],
                              lrs: list[float], wd: float, eta: float, clip: bool, m: float = 0.9) -> list[list[float]]:
    """solo-learn's LARS step written out per element in plain Python floats, one step per entry of ``lrs``."""
    params = [list(p) for p in params]
    buffers: list[list[float] | None] = [None] * len(params)
    for step, lr in enumerate(lrs):
        for i, p in enumerate(params):
            g = grads[step][i]
            d = list(g)
            p_norm, g_norm = math.sqrt(sum(x * x for x in p)), math.sqrt(sum(x * x for x in g))
            if not exclude[i] and p_norm != 0 and g_norm != 0:
                rate = eta * p_norm / (g_norm + p_norm * wd + 1e-8)
                if clip:
                    rate = min(rate / lr, 1.0)
                d = [(gi + wd * pi) * rate for gi, pi in zip(g, p)]
            buffers[i] = d if buffers[i] is None else [m * b + di for b, di in zip(buffers[i], d)]
            params[i] = [pi - lr * b for pi, b in zip(p, buffers[i])]
    return params


@pytest.mark.parametrize("clip", [True, False])
@pytest.mark.parametrize("lrs", [[0.1, 0.1], [1.0, 0.5]])
def test_lars_matches_solo_learn_step(clip: bool, lrs: list[float]) -> None:
    w0, b0, z0 = [3.0, 4.0], [1.0], [0.0, 0.0]  # z: zero norm, plain SGD
    grads = [[[0.5, -1.0], [2.0], [0.3, 0.1]], [[0.0, 0.2], [0.5], [0.1, -0.2]]]
    w, b, z = (torch.nn.Parameter(torch.tensor(x, dtype=torch.float64)) for x in (w0, b0, z0))
    opt = LARS([{"params": [w, z]}, {"params": [b], "weight_decay": 0.0, "lars_exclude": True}],
               lr=lrs[0], momentum=0.9, weight_decay=0.5, eta=0.02, clip_lr=clip)
    for step, lr in enumerate(lrs):
        for group in opt.param_groups:
            group["lr"] = lr
        w.grad, b.grad, z.grad = (torch.tensor(g, dtype=torch.float64) for g in grads[step])
        opt.step()
    expected = solo_learn_lars_reference([w0, b0, z0], [[g[0], g[1], g[2]] for g in grads], [False, True, False],
                                         lrs, wd=0.5, eta=0.02, clip=clip)
    for got, want in zip((w, b, z), expected):
        torch.testing.assert_close(got.detach(), torch.tensor(want, dtype=torch.float64))


def test_lars_clip_takes_the_smaller_of_adapted_and_scheduled_rate() -> None:
    """‖p‖=5, ‖g‖=1, wd=0: the adapted rate is eta·5 = 0.1; with lr=1 the step is 0.1·g, with lr=0.01 it is 0.01·g."""
    for lr, rate in ((1.0, 0.1), (0.01, 0.01)):
        p = torch.nn.Parameter(torch.tensor([3.0, 4.0]))
        opt = LARS([p], lr=lr, momentum=0.0, eta=0.02)
        p.grad = torch.tensor([0.0, 1.0])
        opt.step()
        torch.testing.assert_close(p.detach(), torch.tensor([3.0, 4.0 - rate]))


def test_build_optimizer_keeps_group_weight_decay() -> None:
    layer = torch.nn.Linear(3, 2)
    groups = [{"params": [layer.weight]}, {"params": [layer.bias], "weight_decay": 0.0, "lars_exclude": True}]
    for name in ("sgd", "lars", "adamw"):
        opt = build_optimizer(groups, name, lr=0.1, weight_decay=1e-4, momentum=0.9)
        assert [g["weight_decay"] for g in opt.param_groups] == [1e-4, 0.0]
    with pytest.raises(ValueError, match="unknown optimiser"):
        build_optimizer(groups, "adam", lr=0.1, weight_decay=0.0, momentum=0.9)


def test_auto_precision_never_picks_emulated_bf16_on_cuda(monkeypatch) -> None:
    """A GPU that only emulates bf16 (V100, T4) must train in fp32 under ``precision: auto``."""
    from auxssl.engine import precision

    def emulating_gpu(including_emulation: bool = True) -> bool:
        return including_emulation

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", emulating_gpu)
    assert precision.resolve_precision("auto", torch.device("cuda")).dtype is None
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    assert precision.resolve_precision("auto", torch.device("cuda")).dtype is torch.bfloat16
    assert precision.resolve_precision("bf16", torch.device("cuda")).dtype is torch.bfloat16  # explicit choice kept
