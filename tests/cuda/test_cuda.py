"""What only a GPU can show: AMP steps (bf16, fp16 with a GradScaler), channels_last, kornia on the device, bit-exact
resume with deterministic kernels, NCCL parity on two GPUs. Skipped unless ``AUXSSL_TEST_CUDA=1`` on a CUDA
machine (see tests/conftest.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from auxssl.config import load_config, save_config
from auxssl.engine.checkpoint import find_last_checkpoint, load_checkpoint
from auxssl.engine.trainer import Trainer, train
from auxssl.eval.tracker import read_metrics

pytestmark = pytest.mark.cuda


def tiny(tmp_path: Path, name: str, *extra: str) -> list[str]:
    return [f"name={name}", f"output_dir={tmp_path}", "data.dataset=digits", "data.image_size=16",
            "data.batch_size=32", "data.train_subset=256", "eval.test_subset=100", "model.backbone=resnet18",
            "model.width=16", "model.method=byol", "tasks=[{name: rotation}]", "train.epochs=2",
            "train.device=cuda", "train.progress=false", "train.log_every_steps=2", "eval.every_epochs=1",
            "optim.warmup_epochs=0.5", "data.num_workers=0", *extra]


@pytest.mark.parametrize("precision", ["bf16", "fp16", "fp32"])
def test_amp_steps_train_on_the_gpu(tmp_path: Path, precision: str) -> None:
    config = load_config(None, tiny(tmp_path, precision, f"train.precision={precision}"))
    trainer = Trainer(config)
    assert trainer.device.type == "cuda" and (trainer.scaler is not None) == (precision == "fp16")
    final = trainer.fit()
    losses = [r["loss"] for r in read_metrics(config.run_dir, "train")]
    assert all(loss is not None for loss in losses) and 0 <= final["knn/top1"] <= 100
    assert next(trainer.model.parameters()).is_cuda


def test_channels_last_matches_the_default_layout_on_the_gpu() -> None:
    from baselines import build_backbone

    torch.backends.cudnn.allow_tf32 = False  # compare layouts, not TF32 rounding
    try:
        torch.manual_seed(0)
        net = build_backbone("resnet18", cifar_stem=True).cuda().eval()
        x = torch.rand(8, 3, 32, 32, device="cuda")
        torch.testing.assert_close(net.to(memory_format=torch.channels_last)(x.contiguous(memory_format=torch.channels_last)),
                                   net.to(memory_format=torch.contiguous_format)(x), rtol=1e-4, atol=1e-4)
    finally:
        torch.backends.cudnn.allow_tf32 = True


def test_kornia_augments_on_the_device_with_the_cpu_crops() -> None:
    """The tensor loader on CUDA draws the same crops as on the CPU (the boxes come from seeded generators) and
    its views live on the GPU."""
    from auxssl.data import build_loader, digits, get_recipe

    data = digits("train")
    recipe = get_recipe("byol", 32)
    batches = {device: next(iter(build_loader("tensor", data, recipe, 64, device=device, seed=3)))
               for device in ("cpu", "cuda")}
    assert all(v.is_cuda for v in batches["cuda"].views)
    torch.testing.assert_close(batches["cuda"].crop_boxes.cpu(), batches["cpu"].crop_boxes)
    assert torch.equal(batches["cuda"].index.cpu(), batches["cpu"].index)


def test_the_gpu_crops_a_batch_in_one_warp_with_the_per_image_pixels() -> None:
    """On CUDA the crop runs batched (kornia's resample mode): the same pixels as the per-image crop."""
    from auxssl.data import ViewSpec
    from auxssl.data.loaders import kornia_augmentation

    spec = ViewSpec(size=32, scale=(0.08, 1.0), flip_p=0.0, jitter_p=0.0, grayscale_p=0.0)
    per_image = kornia_augmentation(spec, (0.0,) * 3, (1.0,) * 3)[0].cuda()
    batched = kornia_augmentation(spec, (0.0,) * 3, (1.0,) * 3, batched_crop=True)[0].cuda()
    images = torch.rand(256, 3, 32, 32, device="cuda")
    params = per_image.forward_parameters(images.shape)
    assert (batched(images, params=params) - per_image(images, params=params)).abs().max() < 1e-4


def test_resume_is_bit_exact_with_deterministic_kernels(tmp_path: Path) -> None:
    """A run continued from its epoch-1 checkpoint (into another run directory) ends with the weights of the
    uninterrupted run, on the GPU with deterministic kernels."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    common = ["train.deterministic=true", "train.precision=bf16", "train.checkpoint_every_epochs=1"]
    reference = load_config(None, tiny(tmp_path, "reference", *common))
    train(reference)
    first_epoch = min((reference.run_dir / "checkpoints").glob("step-*.pt"))
    resumed = load_config(None, tiny(tmp_path, "resumed", *common))
    Trainer(resumed, resume=first_epoch).fit()
    want = load_checkpoint(find_last_checkpoint(reference.run_dir))["model"]
    got = load_checkpoint(find_last_checkpoint(resumed.run_dir))["model"]
    assert all(torch.equal(got[k], v) for k, v in want.items())


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_two_gpus_with_nccl_train_end_to_end(tmp_path: Path) -> None:
    config = load_config(None, tiny(tmp_path, "nccl", "train.epochs=1"))
    save_config(config, tmp_path / "nccl.yaml")
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                             "-m", "auxssl", "train", str(tmp_path / "nccl.yaml")], capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert read_metrics(config.run_dir, "eval")[-1]["images_seen"] == 256 // 32 * 32
