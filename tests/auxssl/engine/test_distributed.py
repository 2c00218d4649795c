"""Two gloo processes on CPU give the single-process loss and gradients on the same global batch, for every method.

Batch norms are synchronised (`AllReduceBatchNorm`), whole-batch losses gather embeddings with gradients, and DDP
averages gradients: parameters must receive exactly the gradient of the global loss (lightly once shipped a Barlow
Twins loss whose DDP gradients were scaled by 1/world_size, so gradients are compared, not only losses).
"""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from auxssl import AuxWrapper, RotationPrediction
from auxssl.engine.distributed import convert_batchnorm, wrap_ddp
from auxssl.tasks import AugSelf, ESSLRotation
from baselines import METHODS, Batch

WORLD = 2
HEADS = {
    "byol": dict(proj_hidden_dim=32, proj_dim=16, pred_hidden_dim=32),
    "simclr": dict(proj_hidden_dim=32, proj_dim=16),
    "simsiam": dict(proj_dim=32, pred_hidden_dim=8),
    "moco_v2": dict(proj_hidden_dim=32, proj_dim=16, queue_size=64),
    "swav": dict(proj_hidden_dim=32, proj_dim=16, num_prototypes=10),
    "barlow_twins": dict(proj_hidden_dim=32, proj_dim=32),
    "vicreg": dict(proj_hidden_dim=32, proj_dim=32),
}
CASES = sorted(HEADS) + ["byol+rotation", "byol+augself", "simclr+essl", "simclr+fn_elimination", "simclr+norm_act"]
#: Labels of the global batch for the masked SimCLR case: the (8, 8) mask removes same-class negatives.
GLOBAL_LABELS = torch.tensor([0, 1, 0, 1, 2, 2, 0, 1])


class NormAct2d(nn.BatchNorm2d):
    """timm's ``BatchNormAct2d`` in miniature: a batch norm whose ``drop`` and ``act`` children follow it."""

    def __init__(self, channels: int) -> None:
        super().__init__(channels)
        self.drop, self.act = nn.Identity(), nn.Tanh()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.drop(super().forward(x)))


def small_backbone(norm_act: bool = False) -> nn.Module:
    norm = [NormAct2d(8)] if norm_act else [nn.BatchNorm2d(8), nn.ReLU()]
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), *norm, nn.AdaptiveAvgPool2d(1), nn.Flatten())
    net.feature_dim = 8
    return net


def build(case: str) -> nn.Module:
    """Float64, so that the comparison is far below float32 rounding (which alone moves Barlow Twins'
    gradients by ~1e-4) and any real discrepancy stands out."""
    torch.manual_seed(0)
    method = case.split("+")[0]
    model = METHODS[method](small_backbone(norm_act=case.endswith("+norm_act")), **HEADS[method])
    if case.endswith("+rotation"):  # "all" mode: deterministic, so the split batch sees the same rotations
        model = AuxWrapper(model, [RotationPrediction(mode="all", weight=0.5)])
    elif case.endswith("+augself"):  # batch-norm heads on the base method's features of both views
        model = AuxWrapper(model, [AugSelf(weight=0.5, flip=1.0, hidden_dim=16)])
    elif case.endswith("+essl"):  # four rotations of a separate crop in one backbone call, LayerNorm head
        model = AuxWrapper(model, [ESSLRotation(weight=0.5, hidden_dim=16)])
    return model.double()


def global_batch(case: str, rows: slice = slice(None)) -> Batch:
    """The global batch of ``case`` (8 samples), or the ``rows`` a rank holds; noise control's mask spans the
    global batch on every rank."""
    g = torch.Generator().manual_seed(1)
    views = [torch.rand(8, 3, 8, 8, generator=g, dtype=torch.float64) for _ in range(2)]
    task_views = [torch.rand(8, 3, 6, 6, generator=g, dtype=torch.float64)]  # E-SSL's small crop
    corner = torch.rand(2, 8, 2, generator=g, dtype=torch.float64) * 0.5
    boxes = torch.cat([corner, corner + 0.2 + 0.3 * torch.rand(2, 8, 2, generator=g, dtype=torch.float64)], dim=2)
    params = {"flip": torch.rand(2, 8, generator=g) < 0.5,
              "jitter": 1 + 0.4 * (2 * torch.rand(2, 8, 4, generator=g, dtype=torch.float64) - 1)}
    return Batch([v[rows] for v in views], negative_weight=negative_weight(case), crop_boxes=boxes[:, rows],
                 aug_params={k: v[:, rows] for k, v in params.items()}, task_views=[v[rows] for v in task_views])


def negative_weight(case: str) -> torch.Tensor | None:
    """Noise control's mask over the global batch, the same on every rank (None for the unmasked cases)."""
    if not case.endswith("+fn_elimination"):
        return None
    from auxssl.noise.negatives import same_class_weight

    return same_class_weight(GLOBAL_LABELS, GLOBAL_LABELS).double()


def reference(case: str) -> tuple[float, list[torch.Tensor]]:
    model = build(case)
    out = model(global_batch(case))
    out["loss"].backward()
    return out["loss"].item(), [p.grad.clone() for p in model.parameters() if p.requires_grad]


def worker(rank: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    torch.set_num_threads(1)
    warnings.simplefilter("error", FutureWarning)  # no deprecated collective (torch.distributed.nn.functional)
    results = {}
    for case in CASES:
        model = convert_batchnorm(build(case), "cpu")
        ddp = nn.parallel.DistributedDataParallel(model)
        share = 8 // WORLD
        loss = ddp(global_batch(case, slice(rank * share, (rank + 1) * share)))["loss"]
        loss.backward()
        mean_loss = loss.detach().clone()
        dist.all_reduce(mean_loss)
        results[case] = ((mean_loss / WORLD).item(), [p.grad.clone() for p in model.parameters() if p.requires_grad])
    if rank == 0:
        torch.save(results, Path(out_dir) / "results.pt")
    torch.save(queue_states(rank), Path(out_dir) / f"queues{rank}.pt")
    dist.barrier()
    dist.destroy_process_group()


def queue_states(rank: int) -> dict:
    """Two training forwards of SwAV (queue) and MoCo v2 through the engine's DDP wrapper, each rank on its own
    data; returns the queues and the local embeddings that SwAV should have enqueued."""
    states: dict = {}
    for name, kwargs in (("swav", dict(queue_length=16)), ("moco_v2", {})):
        torch.manual_seed(0)
        model = convert_batchnorm(METHODS[name](small_backbone(), **HEADS[name], **kwargs).double(), "cpu")
        ddp = wrap_ddp(model, torch.device("cpu"))
        local: list[torch.Tensor] = []
        model.projector.register_forward_hook(lambda m, a, out: local.append(out.detach()))
        for step in range(2):
            g = torch.Generator().manual_seed(100 * rank + step)
            ddp(Batch([torch.rand(4, 3, 8, 8, generator=g, dtype=torch.float64) for _ in range(2)]))["loss"].backward()
        states[name] = {"queues": [q.items.clone() for q in model.queues], "local": local}
    return states


@pytest.fixture(scope="module")
def distributed_results() -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(worker, args=(str(Path(tmp) / "init"), tmp), nprocs=WORLD, join=True)
        results = torch.load(Path(tmp) / "results.pt")
        results["queues"] = [torch.load(Path(tmp) / f"queues{r}.pt") for r in range(WORLD)]
        return results


def test_swav_keeps_one_queue_of_local_embeddings_per_rank(distributed_results: dict) -> None:
    """As in the SwAV/EffSSL code: each process enqueues its own embeddings (DDP must not broadcast rank 0's)."""
    for rank_state in distributed_results["queues"]:
        swav = rank_state["swav"]
        assert all(q.shape[0] == 16 // WORLD for q in swav["queues"])
        for crop in range(2):
            expected = torch.cat([nn.functional.normalize(z.chunk(2)[crop], dim=1) for z in swav["local"]])
            torch.testing.assert_close(swav["queues"][crop], expected)
    assert not torch.allclose(distributed_results["queues"][0]["swav"]["queues"][0],
                              distributed_results["queues"][1]["swav"]["queues"][0])


def test_moco_enqueues_the_gathered_keys_on_every_rank(distributed_results: dict) -> None:
    per_rank = [state["moco_v2"]["queues"] for state in distributed_results["queues"]]
    for a, b in zip(*per_rank):
        torch.testing.assert_close(a, b)
    assert per_rank[0][0][:16].abs().sum() > 0


@pytest.mark.parametrize("case", CASES)
def test_two_processes_match_one(case: str, distributed_results: dict) -> None:
    loss, grads = reference(case)
    dist_loss, dist_grads = distributed_results[case]
    assert dist_loss == pytest.approx(loss, rel=1e-10)
    assert len(grads) == len(dist_grads)
    for expected, got in zip(grads, dist_grads):
        torch.testing.assert_close(got, expected, rtol=1e-8, atol=1e-10)


def test_ranks_draw_different_augmentations_deterministically() -> None:
    """Identical images on two ranks must not get identical views (the seed depends on the rank)."""
    from auxssl.config import load_config
    from auxssl.data.datasets import ArrayDataset
    from auxssl.engine.build import build_train_loader, process_seed

    images = torch.full((16, 3, 16, 16), 128, dtype=torch.uint8)
    images[:, 0, :8] = 0  # one structured image, repeated
    dataset = ArrayDataset(images.permute(0, 2, 3, 1).contiguous().numpy(), [0] * 16, ["a"], name="same")
    config = load_config(None, ["data.batch_size=8", "data.image_size=16"])

    def first_batch(rank: int) -> list[torch.Tensor]:
        return next(iter(build_train_loader(config, dataset, torch.device("cpu"), rank, WORLD))).views

    rank0, rank1, again = first_batch(0), first_batch(1), first_batch(0)
    assert all(torch.equal(a, b) for a, b in zip(rank0, again))
    assert not torch.allclose(rank0[0], rank1[0])
    assert process_seed(7, 0, 1) == 7 and len({process_seed(7, r, 4) for r in range(4)}) == 4


def test_batchnorm_conversion_keeps_what_every_norm_computes() -> None:
    """Converting for several processes changes nothing in one process: a norm followed by an activation keeps
    it (timm's BatchNormAct2d lost it before, changing efficientnet_b0's output by up to 22.5), parameter names
    stay, and a batch-norm subclass of unknown behaviour is refused rather than replaced."""
    import copy

    from auxssl.errors import InputError

    torch.manual_seed(0)
    net = small_backbone(norm_act=True).eval()
    x = torch.randn(4, 3, 8, 8)
    converted = convert_batchnorm(copy.deepcopy(net), "cpu").eval()
    torch.testing.assert_close(converted(x), net(x), rtol=0, atol=0)
    assert list(converted.state_dict()) == list(net.state_dict())

    class Odd(nn.BatchNorm2d):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return 2 * super().forward(x)

    with pytest.raises(InputError, match="cannot synchronise Odd"):
        convert_batchnorm(nn.Sequential(Odd(3)), "cpu")


def test_timm_backbones_keep_their_outputs_when_converted() -> None:
    timm = pytest.importorskip("timm")
    import copy

    for name in ("efficientnet_b0", "regnety_002"):
        torch.manual_seed(0)
        model = timm.create_model(name, num_classes=0).eval()
        x = torch.randn(2, 3, 64, 64)
        torch.testing.assert_close(convert_batchnorm(copy.deepcopy(model), "cpu").eval()(x), model(x), rtol=0, atol=0)


def test_the_masked_case_really_masks() -> None:
    """The fn-elimination parity case is not the unmasked loss under another name."""
    assert reference("simclr+fn_elimination")[0] != pytest.approx(reference("simclr")[0])


def probe_batches(rank: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Three steps of features and revealed labels (-1 hidden; a different share per rank)."""
    g = torch.Generator().manual_seed(10 + rank)
    batches = []
    for _ in range(3):
        labels = torch.randint(0, 3, (6,), generator=g)
        labels[torch.rand(6, generator=g) < 0.3 + 0.2 * rank] = -1
        batches.append((torch.randn(6, 4, generator=g), labels))
    return batches


def make_probe(kind: str) -> torch.nn.Module:
    """An online probe on 4-d features: the backbone's linear probe, or per-layer probes on a seeded projector."""
    from auxssl.eval.linear import OnlineLinearProbe
    from auxssl.eval.projector import OnlineProjectorProbes
    from baselines.heads import mlp

    torch.manual_seed(0)
    return OnlineLinearProbe(4, 3) if kind == "linear" else OnlineProjectorProbes(mlp([4, 8, 5]), 3)


def probe_worker(rank: int, init_file: str, out_dir: str, kind: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    torch.set_num_threads(1)
    probe = make_probe(kind)
    metrics = [{k: float(v) for k, v in probe.update(x, y).items()} for x, y in probe_batches(rank)]
    torch.save((probe.state_dict(), metrics), Path(out_dir) / f"probe{rank}.pt")
    dist.destroy_process_group()


@pytest.mark.parametrize("kind", ["linear", "projector_layers"])
def test_online_probe_learns_from_every_rank_and_stays_identical(kind: str) -> None:
    """Under W processes the online probe learned from 1/W of the labelled stream and each rank drifted its own
    way; now every rank steps on the gathered labelled samples: identical weights and metrics on all ranks,
    equal to one process stepping on the concatenated batches (the per-layer projector probes too)."""
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(probe_worker, args=(str(Path(tmp) / "init"), tmp, kind), nprocs=WORLD, join=True)
        (state0, metrics0), (state1, metrics1) = (torch.load(Path(tmp) / f"probe{r}.pt") for r in range(WORLD))
    assert all(torch.equal(state0[k], state1[k]) for k in state0) and metrics0 == metrics1
    single = make_probe(kind)
    for steps in zip(*(probe_batches(r) for r in range(WORLD))):
        x, y = torch.cat([s[0] for s in steps]), torch.cat([s[1] for s in steps])
        expected = single.update(x, y)
    assert metrics0[-1]["online_linear/labelled"] == expected["online_linear/labelled"]
    assert metrics0[-1].keys() == expected.keys()
    for key, value in single.state_dict().items():
        torch.testing.assert_close(state0[key], value)


@pytest.mark.parametrize("backend", ["tensor", "torchvision", "auto"])
def test_three_processes_run_equal_steps_on_an_uneven_folder_with_a_corrupt_image(tmp_path: Path,
                                                                                  backend: str) -> None:
    """torchrun with 3 processes, SimCLR (whose loss gathers every rank's embeddings), a folder of 107 files
    (not a multiple of 3 × the batch) one of which does not decode: before, shards of 36/36/35 images gave 6/6/5
    steps and the corrupt file shortened a batch, and a rank died in all_gather. Now every shard holds
    ⌊107/3⌋ = 35 images and the corrupt one is replaced: 35 // 6 = 5 steps on every rank. With ``auto`` and a
    memory budget that the whole folder exceeds (20 kB decoded) but a shard fits (7 kB), run.json records the
    backend that ran on the shards (tensor), not the one the whole set would get."""
    import os
    import subprocess
    import sys

    from PIL import Image

    from auxssl.eval.tracker import read_metrics

    rng = torch.Generator().manual_seed(0)
    for i in range(107):
        folder = tmp_path / "data" / ("a" if i % 2 else "b")
        folder.mkdir(parents=True, exist_ok=True)
        pixels = torch.randint(0, 256, (8, 8, 3), generator=rng, dtype=torch.uint8).numpy()
        Image.fromarray(pixels).save(folder / f"{i:03d}.png")
    cut = tmp_path / "data" / "a" / "001.png"
    cut.write_bytes(cut.read_bytes()[:-30])  # the header reads; the pixels do not decode
    sets = [f"data.root={tmp_path / 'data'}", f"data.backend={backend}", "data.image_size=8", "data.batch_size=18",
            "data.num_workers=0", "model.backbone=resnet10", "model.width=16", "model.cifar_stem=true",
            "model.method_args={proj_hidden_dim: 32, proj_dim: 16}", "tasks=[]", "train.epochs=2",
            "train.precision=fp32", "train.progress=false", "train.log_every_steps=1", "optim.warmup_epochs=0",
            "eval.every_epochs=0", "eval.at_start=false", "data.memory_budget_gb=0.00001"]
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=3", "-m", "auxssl",
               "train", "own_folder", "--output-dir", str(tmp_path / "runs"), "--name", "ddp",
               *(a for s in sets for a in ("--set", s))]
    result = subprocess.run(command, capture_output=True, text=True, timeout=400,
                            env={**os.environ, "OMP_NUM_THREADS": "1", "AUXSSL_CACHE": str(tmp_path / "cache")})
    assert result.returncode == 0, result.stderr[-3000:]
    train = read_metrics(tmp_path / "runs" / "ddp", "train")
    assert [r["step"] for r in train] == list(range(1, 11)) and train[-1]["images_seen"] == 10 * 18
    import json

    recorded = json.loads((tmp_path / "runs" / "ddp" / "run.json").read_text())["budget"]["backend"]
    assert recorded == ("tensor" if backend == "auto" else backend)


@pytest.mark.parametrize("backend", ["tensor", "torchvision"])
def test_every_rank_gets_the_same_steps_and_batch_size(tmp_path: Path, backend: str) -> None:
    """The shards behind the torchrun test, built directly: 107 files (one truncated) over 3 ranks, local batch 6."""
    from PIL import Image

    from auxssl.config import load_config
    from auxssl.data.datasets import FolderDataset
    from auxssl.engine.build import build_train_loader

    for i in range(107):
        Image.new("RGB", (8, 8), (i, 0, 0)).save(tmp_path / f"{i:03d}.png")
    (tmp_path / "000.png").write_bytes((tmp_path / "001.png").read_bytes()[:-30])  # rank 0's first image
    dataset = FolderDataset(tmp_path)
    config = load_config(None, ["data.batch_size=18", "data.image_size=8", f"data.backend={backend}",
                                "data.num_workers=0"])
    loaders = [build_train_loader(config, dataset, torch.device("cpu"), rank, 3) for rank in range(3)]
    assert [len(loader) for loader in loaders] == [5, 5, 5]  # ⌊107/3⌋ = 35 images each
    sizes = [[batch.size for batch in loader] for loader in loaders]
    assert sizes == [[6] * 5] * 3
