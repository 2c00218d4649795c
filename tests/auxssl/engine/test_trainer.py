"""The engine end to end on tiny runs: training, kill-and-resume equality, NaN handling, CLI, export."""

from __future__ import annotations

import itertools
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torchvision import models

from auxssl import AuxWrapper, RotationPrediction
from auxssl.cli import main
from auxssl.config import ConfigError, load_config, save_config
from auxssl.data.datasets import ArrayDataset
from auxssl.engine.build import RunDatasets
from auxssl.engine.checkpoint import find_last_checkpoint, load_checkpoint
from auxssl.engine.syncs import ScalarReads
from auxssl.engine.trainer import NonFiniteLossError, Trainer, train
from auxssl.eval.tracker import read_metrics
from baselines import build_backbone
from baselines.checkpointing import enable_activation_checkpointing


def tiny(tmp_path: Path, name: str, *extra: str) -> list[str]:
    """A run of a few seconds: 64 digits at 16 px, ResNet-10, BYOL with small heads + rotation, batch 16."""
    return [
        f"name={name}", f"output_dir={tmp_path}", "data.dataset=digits", "data.image_size=16", "data.batch_size=16",
        "data.train_subset=64", "eval.test_subset=40", "model.backbone=resnet10", "model.method=byol",
        "model.method_args={proj_hidden_dim: 64, proj_dim: 32, pred_hidden_dim: 64}",
        "tasks=[{name: rotation, weight: 0.1}]", "train.epochs=2", "train.precision=fp32", "train.progress=false",
        "train.log_every_steps=2", "eval.every_epochs=1", "optim.warmup_epochs=0.5", "optim.lr=0.1", *extra,
    ]


def test_training_writes_a_complete_run_directory(tmp_path: Path) -> None:
    config = load_config(None, tiny(tmp_path, "run"))
    final = train(config)
    run = config.run_dir
    assert {"knn/top1", "knn/top5"} <= set(final)
    assert {p.name for p in run.iterdir()} >= {"config.yaml", "run.json", "metrics.jsonl", "checkpoints"}
    assert load_config(run / "config.yaml") == config  # the resolved config round-trips
    evals, trains = read_metrics(run, "eval"), read_metrics(run, "train")
    assert [r["epoch"] for r in evals] == [1, 2] and evals[-1]["step"] == 8 and evals[-1]["images_seen"] == 128
    assert {"loss", "loss/base", "loss/rotation", "acc/rotation", "lr", "images_per_s"} <= set(trains[-1])
    assert all(r["train_time_s"] > 0 for r in evals)
    state = load_checkpoint(find_last_checkpoint(run))
    assert state["step"] == 8 and set(state) >= {"model", "optimizer", "rng", "backbone", "config", "train_time_s"}
    with pytest.raises(FileExistsError, match="--resume"):
        Trainer(config)


def run_cli(config_path: Path, *extra: str) -> subprocess.Popen:
    """``python -m auxssl train`` in a fresh process (same thread settings for every run of a comparison)."""
    return subprocess.Popen([sys.executable, "-m", "auxssl", "train", str(config_path), *extra],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def test_killed_run_resumes_to_identical_weights(tmp_path: Path) -> None:
    reference = load_config(None, tiny(tmp_path, "reference", "train.epochs=3"))
    killed = load_config(None, tiny(tmp_path, "killed", "train.epochs=3", "train.checkpoint_every_steps=1"))
    save_config(reference, tmp_path / "reference.yaml")
    save_config(killed, tmp_path / "killed.yaml")
    uninterrupted = run_cli(tmp_path / "reference.yaml")

    process = run_cli(tmp_path / "killed.yaml")
    deadline = time.time() + 120
    while find_last_checkpoint(killed.run_dir) is None or "00000004" not in find_last_checkpoint(killed.run_dir).name:
        assert process.poll() is None, "the run ended before it could be killed"
        assert time.time() < deadline, "no checkpoint appeared"
        time.sleep(0.01)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL
    interrupted_at = load_checkpoint(find_last_checkpoint(killed.run_dir))["step"]
    assert 4 <= interrupted_at < 12

    resumed = run_cli(tmp_path / "killed.yaml", "--resume")
    for p in (resumed, uninterrupted):
        assert p.wait(timeout=300) == 0, p.stderr.read().decode()[-2000:]
    got = load_checkpoint(find_last_checkpoint(killed.run_dir))
    want = load_checkpoint(find_last_checkpoint(reference.run_dir))
    assert got["step"] == want["step"] == 12
    for key, value in want["model"].items():
        assert torch.equal(got["model"][key], value), key  # bit-identical on CPU
    steps = [r["step"] for r in read_metrics(killed.run_dir, "train")]
    assert steps == sorted(set(steps))  # no record duplicated by the resume


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path: Path) -> None:
    good = load_config(None, tiny(tmp_path, "nan", "train.epochs=1"))
    train(good)
    last_good = find_last_checkpoint(good.run_dir)
    exploding = load_config(None, tiny(tmp_path, "nan", "train.epochs=2", "optim.lr=1e30",
                                       "train.checkpoint_every_steps=1"))
    with pytest.raises(NonFiniteLossError, match="Last good checkpoint: ") as error:
        train(exploding, resume=True, allow_config_change=True)  # the explosion is provoked on purpose
    named = Path(str(error.value).split("Last good checkpoint: ")[1].split(". ")[0])
    assert named == find_last_checkpoint(good.run_dir) and named.is_file()
    failed_step = int(str(error.value).split("step ")[1].split(" ")[0])
    state = load_checkpoint(named)
    assert state["step"] <= failed_step  # nothing was checkpointed after the non-finite loss
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    assert last_good.is_file()  # the checkpoint from before the explosion survives as well


def test_collapse_is_warned_about(tmp_path: Path) -> None:
    config = load_config(None, tiny(tmp_path, "collapse", "train.collapse_threshold=1000", "train.epochs=1"))
    with pytest.warns(UserWarning, match="collapse"):
        train(config)


def test_activation_checkpointing_gives_identical_gradients_and_running_stats() -> None:
    torch.manual_seed(0)
    plain = build_backbone("resnet18", cifar_stem=True)
    checkpointed = build_backbone("resnet18", cifar_stem=True)
    checkpointed.load_state_dict(plain.state_dict())
    enable_activation_checkpointing(checkpointed)
    assert set(plain.state_dict()) == set(checkpointed.state_dict())  # same parameter names
    x = torch.rand(4, 3, 16, 16)
    plain(x).square().sum().backward()
    checkpointed(x).square().sum().backward()
    for (name, a), b in zip(plain.named_parameters(), checkpointed.parameters()):
        torch.testing.assert_close(a.grad, b.grad, msg=name)
    # the recomputation in backward must not update batch-norm running statistics a second time
    for (name, a), b in zip(plain.named_buffers(), checkpointed.buffers()):
        assert torch.equal(a, b), name
    assert all(int(m.num_batches_tracked) == 1 for m in checkpointed.modules() if isinstance(m, nn.BatchNorm2d))


def test_compiled_activation_checkpointing_gives_identical_gradients_and_running_stats() -> None:
    """train.compile with train.activation_checkpointing: the first step failed (Dynamo called the bound
    context_fn without self); compiled, the checkpointed stages must still match the plain network."""
    torch.manual_seed(0)
    plain = build_backbone("resnet10", cifar_stem=True, width=16)
    checkpointed = build_backbone("resnet10", cifar_stem=True, width=16)
    checkpointed.load_state_dict(plain.state_dict())
    enable_activation_checkpointing(checkpointed)
    x = torch.rand(4, 3, 16, 16)
    plain(x).square().sum().backward()
    torch.compile(checkpointed, backend="aot_eager")(x).square().sum().backward()
    for (name, a), b in zip(plain.named_parameters(), checkpointed.parameters()):
        torch.testing.assert_close(a.grad, b.grad, msg=name)
    for (name, a), b in zip(plain.named_buffers(), checkpointed.buffers()):
        assert torch.equal(a, b), name  # running statistics advanced exactly once


def test_cli_train_export_report(tmp_path: Path, capsys) -> None:
    config = tmp_path / "cfg.yaml"
    save_config(load_config(None, tiny(tmp_path, "cli", "model.backbone=resnet18", "train.epochs=1")), config)
    assert main(["train", str(config), "--set", "eval.knn_k=20"]) == 0
    assert "knn/top1" in json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    weights = tmp_path / "backbone.pt"
    assert main(["export", str(tmp_path / "cli"), "--out", str(weights)]) == 0
    assert "load it with" in capsys.readouterr().out
    model = models.resnet18()
    model.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
    model.maxpool, model.fc = nn.Identity(), nn.Identity()
    model.load_state_dict(torch.load(weights))  # strict: every key matches
    assert main(["report", str(tmp_path / "cli")]) == 0
    assert (tmp_path / "cli" / "report" / "report.html").is_file()
    with pytest.raises(SystemExit):
        main(["train"])


def test_torchrun_two_processes_train_end_to_end(tmp_path: Path) -> None:
    """``torchrun --nproc_per_node=2 -m auxssl train``: gloo on CPU, data sharded, rank 0 logs and checkpoints."""
    config = load_config(None, tiny(tmp_path, "ddp", "train.epochs=1"))
    save_config(config, tmp_path / "ddp.yaml")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         "-m", "auxssl", "train", str(tmp_path / "ddp.yaml")],
        capture_output=True, text=True, timeout=300, env=env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    evals = read_metrics(config.run_dir, "eval")
    assert len(evals) == 1 and evals[0]["images_seen"] == 64 and evals[0]["step"] == 4  # 2 × 8 images per step
    state = load_checkpoint(find_last_checkpoint(config.run_dir))
    assert state["step"] == 4 and not any("module." in k for k in state["model"])


def test_subsets_are_random_samples_covering_every_class(tmp_path: Path) -> None:
    from PIL import Image

    from auxssl.data import FolderDataset
    from auxssl.engine.build import random_subset

    for c in range(4):  # a folder dataset is sorted by class: a prefix would hold one class only
        for i in range(25):
            folder = tmp_path / f"class{c}"
            folder.mkdir(exist_ok=True)
            Image.new("RGB", (4, 4), (c, i, 0)).save(folder / f"{i}.png")
    dataset = FolderDataset(tmp_path)
    subset = random_subset(dataset, 20)
    assert len(subset) == 20 and set(subset.labels.tolist()) == {0, 1, 2, 3}
    assert list(random_subset(dataset, 20).indices) == list(subset.indices)  # fixed across runs
    assert random_subset(dataset, None) is dataset


@pytest.mark.parametrize("tasks", [(), ("tasks=[]",)], ids=["with_rotation", "without_tasks"])
def test_online_probe_gets_only_the_current_training_features(tmp_path: Path, tasks: tuple[str, ...]) -> None:
    """The probe gets the base method's features of the first view of the current step, with or without tasks
    (a method without tasks is not wrapped); an evaluation between steps must not leave its features for the
    probe (they were paired with the next step's labels before)."""
    import copy

    config = load_config(None, tiny(tmp_path, "tap", "eval.online_linear=true", "data.reveal_labels=1.0", *tasks))
    trainer = Trainer(config)
    trainer.evaluate()
    assert trainer.features.online_features == []  # evaluation passes are never recorded
    received: list[tuple[torch.Tensor, torch.Tensor]] = []
    trainer.online_probe.update = lambda features, labels: received.append((features, labels)) or {}
    batch = next(iter(trainer.loader))
    before = copy.deepcopy(trainer.model.backbone).train()
    with torch.no_grad():
        expected = before(batch.views[0])  # each view has its own call (and batch-norm statistics)
    trainer.train_step(batch)
    assert len(received) == 1
    features, labels = received[0]
    assert torch.equal(labels, batch.label)
    torch.testing.assert_close(features, expected, rtol=1e-4, atol=1e-5)


def test_the_online_probe_never_sees_the_tasks_transformed_copies(tmp_path: Path) -> None:
    """The wrapper records the backbone only while the base method runs: a base method that encodes nothing (the
    tasks-alone control) leaves the online features empty, where the trainer's old tap handed the probe the first
    *rotated* copies; and such a run asking for the online probe is refused before training."""
    from baselines import NoBaseLoss

    model = AuxWrapper(NoBaseLoss(build_backbone("resnet10", cifar_stem=True, width=8)), [RotationPrediction()])
    model([torch.rand(4, 3, 16, 16), torch.rand(4, 3, 16, 16)])
    assert model.online_features == []
    with pytest.raises(ConfigError, match="model.method=none computes none"):
        load_config(None, tiny(tmp_path, "none", "model.method=none", "eval.online_linear=true",
                               "data.reveal_labels=1.0"))


def test_tau_schedule_runs_to_the_methods_final_tau(tmp_path: Path) -> None:
    config = load_config(None, tiny(tmp_path, "tau", "model.method=moco_v2", "tasks=[]",
                                    "model.method_args={proj_hidden_dim: 32, proj_dim: 16, queue_size: 64}"))
    schedule = Trainer(config).tau_schedule
    total = len(schedule)
    expected = [0.999 - 0.009 * (math.cos(math.pi * k / total) + 1) / 2 for k in range(total)]
    assert schedule.tolist() == pytest.approx(expected)


def patterns(n: int, size: int = 16, seed: int = 0) -> ArrayDataset:
    """Four trivially separable classes: horizontal stripes, vertical stripes, checkerboard, flat grey."""
    g = np.random.default_rng(seed)
    i, j = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
    masks = [(i // 2) % 2, (j // 2) % 2, ((i // 2) + (j // 2)) % 2, np.full((size, size), 0.5)]
    labels = np.arange(n) % 4
    images = np.stack([masks[c] * 200 + 28 + g.normal(0, 8, (size, size)) for c in labels]).clip(0, 255)
    images = np.repeat(images[..., None], 3, axis=-1).astype(np.uint8)
    return ArrayDataset(images, labels, ["h", "v", "checker", "flat"], name=f"patterns{seed}")


def test_online_probe_learns_a_separable_problem_through_the_trainer(tmp_path: Path) -> None:
    """Batch 32 with half the labels revealed: the probe's loss falls and its top-1 (over labelled samples)
    ends near 100%; it diverged before (loss 2.7 → 8.6 at batch 64)."""
    config = load_config(None, tiny(tmp_path, "probe", "data.batch_size=32", "data.train_subset=null",
                                    "data.recipe=ffcv_gaussian_noise", "data.reveal_labels=0.5",
                                    "eval.online_linear=true", "train.epochs=4", "eval.every_epochs=4"))
    train_set = patterns(256)
    final = Trainer(config, datasets=RunDatasets(train_set, train_set, patterns(64, seed=1))).fit()
    logs = [r for r in read_metrics(config.run_dir, "train") if "online_linear/loss" in r]
    assert logs[-1]["online_linear/loss"] < 0.5 * logs[0]["online_linear/loss"], logs
    assert logs[-1]["online_linear/top1"] >= 95.0 and final["knn/top1"] >= 95.0


def test_online_probe_metrics_are_means_over_labelled_samples(tmp_path: Path) -> None:
    """Steps without labels must not dilute the probe's metrics (18.75 was logged for 30.0 before)."""
    config = load_config(None, tiny(tmp_path, "avg", "eval.online_linear=true", "data.reveal_labels=1.0",
                                    "train.epochs=1", "train.log_every_steps=4"))
    trainer = Trainer(config)
    calls = iter(range(100))
    results = [{}, {"online_linear/top1": 30.0, "online_linear/loss": 1.0, "online_linear/labelled": 3},
               {}, {"online_linear/top1": 60.0, "online_linear/loss": 2.0, "online_linear/labelled": 1}]
    trainer.online_probe.update = lambda features, labels: results[next(calls) % 4]
    trainer.fit()
    logged = read_metrics(config.run_dir, "train")[0]
    assert logged["online_linear/top1"] == pytest.approx((3 * 30.0 + 60.0) / 4)
    assert logged["online_linear/loss"] == pytest.approx((3 * 1.0 + 2.0) / 4)
    assert "online_linear/labelled" not in logged


def test_evaluation_runs_at_the_training_resolution_and_is_recorded(tmp_path: Path) -> None:
    """Digits are stored at 32 px; a run trained at 16 px must be scored at 16 px (it was scored at 32 px)."""
    from auxssl.eval.offline import evaluate_backbone

    config = load_config(None, tiny(tmp_path, "res"))
    trainer = Trainer(config)
    got = trainer.evaluate()
    at = {size: evaluate_backbone(trainer.model.backbone, trainer.bank_set, trainer.test_set, image_size=size)
          for size in (16, 32)}
    assert got == at[16] and got != at[32]
    data = json.loads((config.run_dir / "run.json").read_text())["evaluation"]["data"]
    assert data["image_size"] == 16 and data["bank_size"] == 64 and data["test_size"] == 40
    wider = Trainer(load_config(None, tiny(tmp_path, "res32", "eval.image_size=32", "eval.bank=full_train")))
    assert wider.evaluate() != got and wider.run_info().evaluation["data"]["bank_size"] == len(wider.bank_set) > 64
    budget = wider.run_info().budget
    assert budget["epochs"] == 2 and budget["batch_size"] == 16 and budget["train_images"] == 64


def test_checkpoint_writing_is_not_training_time(tmp_path: Path, monkeypatch) -> None:
    """A deliberately slow checkpoint writer must not show in train_time_s (it added 40% before)."""
    import auxssl.engine.resume as resume_module

    real_save = resume_module.atomic_save

    def slow_save(state, path):  # noqa: ANN001
        time.sleep(0.5)
        real_save(state, path)

    monkeypatch.setattr(resume_module, "atomic_save", slow_save)
    config = load_config(None, tiny(tmp_path, "slow", "train.checkpoint_every_steps=1", "train.epochs=1",
                                    "eval.every_epochs=5"))
    started = time.perf_counter()
    train(config)
    wall = time.perf_counter() - started
    saves = 5  # 4 steps, plus the epoch end
    recorded = read_metrics(config.run_dir, "eval")[-1]["train_time_s"]
    assert recorded < wall - 0.9 * 0.5 * saves, (recorded, wall)


def test_evaluation_at_start_records_the_initial_weights_once(tmp_path: Path) -> None:
    """eval.at_start adds an epoch-0 record: the initial backbone's kNN, before any step or training time."""
    config = load_config(None, tiny(tmp_path, "start", "eval.at_start=true"))
    trainer = Trainer(config)
    initial = trainer.evaluate()
    trainer.fit()
    evals = read_metrics(config.run_dir, "eval")
    assert [r["epoch"] for r in evals] == [0, 1, 2]
    first = evals[0]
    assert first["step"] == 0 and first["train_time_s"] == 0 and first["knn/top1"] == initial["knn/top1"]
    resumed = Trainer(config, resume=True)  # finished: returns its numbers, evaluates nothing again
    resumed.fit()
    assert len(read_metrics(config.run_dir, "eval")) == 3


def test_records_say_what_ran_tf32_and_cudnn_autotuning() -> None:
    """On CUDA "fp32" convolutions run in TF32 by default: the record says so; cuDNN autotunes unless runs must
    be deterministic (SSL batches keep one shape)."""
    from auxssl.engine.build import seed_everything
    from auxssl.engine.precision import Precision

    assert Precision(None, "cpu").label == "fp32" and Precision(torch.bfloat16, "cuda").label == "bf16"
    assert Precision(None, "cuda").label == "fp32 (TF32 convolutions)"  # torch's defaults
    before = torch.backends.cudnn.benchmark
    try:
        seed_everything(0, deterministic=False)
        assert torch.backends.cudnn.benchmark
        seed_everything(0, deterministic=True)
        assert not torch.backends.cudnn.benchmark
    finally:
        torch.backends.cudnn.benchmark = before
        torch.use_deterministic_algorithms(False)


@pytest.mark.parametrize("task", ["rotation", "jigsaw"])
@pytest.mark.parametrize("method", ["byol", "simclr", "simsiam", "moco_v2", "swav", "barlow_twins", "vicreg"])
def test_a_training_step_reads_at_most_one_value_back_from_the_device(tmp_path: Path, method: str, task: str) -> None:
    """Between log steps the host must not wait for the device: one read per step at most (the finite-loss check
    before backward), with the step's metrics, the probe and noise measurement accumulated on the device. Before,
    every output's float(), the probe's .item()s, SwAV's queue.full and the noise rates each synchronised."""
    from auxssl.eval.tracker import WindowMeans

    config = load_config(None, tiny(tmp_path, f"{method}-{task}", f"model.method={method}", "model.method_args={}",
                                    f"tasks=[{{name: {task}}}]", "data.reveal_labels=0.5", "eval.online_linear=true",
                                    "train.log_every_steps=1000"))
    trainer = Trainer(config)
    batches = iter(list(itertools.islice(trainer.loader, 4)))  # loading is not the step (kornia reads values)
    window = WindowMeans()

    def step() -> None:
        out = trainer.train_step(next(batches))
        labelled = out.pop("online_linear/labelled", 0)
        for key, value in out.items():
            window.add(key, value, labelled if key.startswith("online_linear/") else 1.0)
        trainer.step += 1

    step()  # the first step builds what is built lazily
    counter = ScalarReads()
    with counter:
        for _ in range(3):
            step()
    assert counter.count <= 3, counter.count
    means = window.means()  # read back once, at the log step
    assert math.isfinite(means["loss"]) and "online_linear/top1" in means
    assert ("noise/fn_rate_raw" in means) == (method in ("simclr", "moco_v2"))  # methods with negatives
