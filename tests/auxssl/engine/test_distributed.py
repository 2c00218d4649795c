"""Two gloo processes on CPU give the single-process loss and gradients on the same global batch, for every method.

Batch norms are synchronised (`AllReduceBatchNorm`), whole-batch losses gather embeddings with gradients, and DDP
averages gradients: parameters must receive exactly the gradient of the global loss (lightly once shipped a Barlow
Twins loss whose DDP gradients were scaled by 1/world_size, so gradients are compared, not only losses).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from auxssl import AuxWrapper, RotationPrediction
from auxssl.engine.distributed import convert_batchnorm, wrap_ddp
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
CASES = sorted(HEADS) + ["byol+rotation", "simclr+fn_elimination"]
#: Labels of the global batch for the masked SimCLR case: the (8, 8) mask removes same-class negatives.
GLOBAL_LABELS = torch.tensor([0, 1, 0, 1, 2, 2, 0, 1])


def small_backbone() -> nn.Module:
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten())
    net.feature_dim = 8
    return net


def build(case: str) -> nn.Module:
    """Float64, so that the comparison is far below float32 rounding (which alone moves Barlow Twins'
    gradients by ~1e-4) and any real discrepancy stands out."""
    torch.manual_seed(0)
    method = case.split("+")[0]
    model = METHODS[method](small_backbone(), **HEADS[method])
    if case.endswith("+rotation"):  # "all" mode: deterministic, so the split batch sees the same rotations
        model = AuxWrapper(model, [RotationPrediction(mode="all", weight=0.5)])
    return model.double()


def global_batch() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return [torch.rand(8, 3, 8, 8, generator=g, dtype=torch.float64) for _ in range(2)]


def negative_weight(case: str) -> torch.Tensor | None:
    """Noise control's mask over the global batch, the same on every rank (None for the unmasked cases)."""
    if not case.endswith("+fn_elimination"):
        return None
    from auxssl.noise.negatives import same_class_weight

    return same_class_weight(GLOBAL_LABELS, GLOBAL_LABELS).double()


def reference(case: str) -> tuple[float, list[torch.Tensor]]:
    model = build(case)
    out = model(Batch(global_batch(), negative_weight=negative_weight(case)))
    out["loss"].backward()
    return out["loss"].item(), [p.grad.clone() for p in model.parameters() if p.requires_grad]


def worker(rank: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    torch.set_num_threads(1)
    results = {}
    for case in CASES:
        model = convert_batchnorm(build(case), "cpu")
        ddp = nn.parallel.DistributedDataParallel(model)
        share = 8 // WORLD
        views = [v[rank * share : (rank + 1) * share] for v in global_batch()]
        loss = ddp(Batch(views, negative_weight=negative_weight(case)))["loss"]
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


def test_the_masked_case_really_masks() -> None:
    """The fn-elimination parity case is not the unmasked loss under another name."""
    assert reference("simclr+fn_elimination")[0] != pytest.approx(reference("simclr")[0])


def sharded_extraction_worker(rank: int, init_file: str, out_dir: str) -> None:
    from auxssl.data import digits
    from auxssl.eval.features import extract_features

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    features, labels = extract_features(small_backbone().eval(), digits("test"), image_size=8, precision="fp32",
                                        shard=(rank, WORLD))
    torch.save((features, labels), Path(out_dir) / f"features{rank}.pt")
    dist.destroy_process_group()


def test_sharded_feature_extraction_gathers_what_one_process_extracts() -> None:
    """Under torch.distributed every rank extracts its share; the gathered features are the single-process ones."""
    from auxssl.data import digits
    from auxssl.eval.features import extract_features

    torch.manual_seed(0)
    single, labels = extract_features(small_backbone().eval(), digits("test"), image_size=8, precision="fp32")
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(sharded_extraction_worker, args=(str(Path(tmp) / "init"), tmp), nprocs=WORLD, join=True)
        for rank in range(WORLD):
            features, gathered_labels = torch.load(Path(tmp) / f"features{rank}.pt")
            torch.testing.assert_close(features, single)
            assert torch.equal(gathered_labels, labels)
