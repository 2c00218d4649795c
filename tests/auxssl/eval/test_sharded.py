"""Distributed evaluation (3 gloo processes on CPU): the split kNN and the rank-0 probes give what one process
computes on the whole sets, every rank gets the results, and no rank waits unboundedly."""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from auxssl.eval.knn import knn_scores

WORLD = 3


def spawn(worker, *args, timeout_s: float = 60.0) -> list:
    """Run ``worker(rank, group, *args)`` on WORLD gloo processes (``group``: an `EvalGroup` waiting at most
    ``timeout_s``); returns what each rank returned."""
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(_entry, args=(worker, str(Path(tmp) / "init"), tmp, args, timeout_s), nprocs=WORLD, join=True)
        return [torch.load(Path(tmp) / f"out{r}.pt", weights_only=False) for r in range(WORLD)]


def _entry(rank: int, worker, init_file: str, out_dir: str, args: tuple, timeout_s: float) -> None:
    from auxssl.eval.sharded import EvalGroup

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    torch.set_num_threads(1)
    try:
        group = EvalGroup.create(timeout_s)
        torch.save(worker(rank, group, *args), Path(out_dir) / f"out{rank}.pt")
    finally:
        dist.destroy_process_group()


def clustered(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(5, 16, generator=torch.Generator().manual_seed(0))
    labels = torch.randint(0, 5, (n,), generator=g)
    return centres[labels] + 0.8 * torch.randn(n, 16, generator=g), labels


def knn_worker(rank: int, group, bank_size: int, k: int) -> tuple:
    from auxssl.eval.sharded import sharded_knn_evaluate, sharded_knn_votes

    bank, bank_labels = clustered(bank_size, 1)
    queries, query_labels = clustered(301, 2)
    mine = slice(rank, None, WORLD)  # uneven shards: 1003 → 335/334/334, 301 → 101/100/100
    votes, labels, origin = sharded_knn_votes(bank[mine], bank_labels[mine], queries[mine], query_labels[mine],
                                              group, k=k, temperature=0.1, num_classes=5)
    accuracy = sharded_knn_evaluate(bank[mine], bank_labels[mine], queries[mine], query_labels[mine], group,
                                    k=k, temperature=0.1, num_classes=5)
    return votes, labels, origin, accuracy


@pytest.mark.parametrize("bank_size, k", [(1003, 20), (250, 100)])  # (250, 100): k above every bank shard (84)
def test_split_knn_votes_equal_one_process_votes(bank_size: int, k: int) -> None:
    """Every query's votes, from a top-k merged around the ring of bank shards, equal the votes of one process
    searching the whole bank; each rank ends with the next rank's queries; the summed accuracy is the global one."""
    from auxssl.eval.knn import KNNProtocol, knn_evaluate

    bank, bank_labels = clustered(bank_size, 1)
    queries, query_labels = clustered(301, 2)
    expected = knn_scores(bank, bank_labels, queries, k=k, temperature=0.1, num_classes=5)
    results = spawn(knn_worker, bank_size, k)
    for rank, (votes, labels, origin, accuracy) in enumerate(results):
        assert origin == (rank + 1) % WORLD
        torch.testing.assert_close(votes, expected[origin::WORLD], rtol=1e-5, atol=1e-4)
        assert torch.equal(labels, query_labels[origin::WORLD])
        assert accuracy == pytest.approx(knn_evaluate(bank, bank_labels, queries, query_labels,
                                                      KNNProtocol(k, 0.1), num_classes=5))
    assert sum(len(r[1]) for r in results) == len(queries)


def small_backbone() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())


def evaluate_worker(rank: int, group) -> dict:
    from auxssl.data import digits
    from auxssl.eval.linear import ProbeConfig
    from auxssl.eval.offline import evaluate_backbone

    return evaluate_backbone(small_backbone(), digits("train"), digits("test"), linear=ProbeConfig(epochs=3),
                             image_size=8, precision="fp32", group=group, num_workers=0)


def test_distributed_evaluation_gives_every_rank_the_single_process_results() -> None:
    """kNN split over 3 ranks and a linear probe trained on rank 0 on the features gathered in dataset order:
    the same figures as one process, on every rank."""
    from auxssl.data import digits
    from auxssl.eval.linear import ProbeConfig
    from auxssl.eval.offline import evaluate_backbone

    single = evaluate_backbone(small_backbone(), digits("train"), digits("test"), linear=ProbeConfig(epochs=3),
                               image_size=8, precision="fp32", num_workers=0)
    assert set(single) == {"knn/top1", "knn/top5", "linear/top1", "linear/top5"}
    for results in spawn(evaluate_worker):
        assert results == pytest.approx(single, abs=1e-9)


def slow_main_worker(rank: int, group) -> str:
    try:
        group.run_on_main(lambda: time.sleep(4 * group.timeout_s) or {"linear/top1": 1.0}, "probes")
    except (TimeoutError, RuntimeError) as err:
        return f"{type(err).__name__}: {err}"
    return "finished"


def test_ranks_waiting_for_rank_0_stop_after_the_configured_time() -> None:
    """Rank 0 busy for 4× eval.wait_timeout_s: the other ranks give up after the timeout with a message naming
    the setting, instead of hanging (or being killed by NCCL's watchdog)."""
    start = time.perf_counter()
    messages = spawn(slow_main_worker, timeout_s=1.0)
    assert messages[0].startswith("RuntimeError: the other ranks stopped waiting for rank 0's probes")
    assert messages[0].endswith("it took longer than eval.wait_timeout_s=1 s")
    for message in messages[1:]:
        assert message.startswith("TimeoutError: rank ")
        assert "waited more than eval.wait_timeout_s=1 s for rank 0's probes" in message
    assert time.perf_counter() - start < 60


def failing_main_worker(rank: int, group) -> str:
    try:
        group.run_on_main(lambda: 1 / 0, "probes")
    except (RuntimeError, ZeroDivisionError) as err:
        return f"{type(err).__name__}: {err}"
    return "no error"


def test_an_error_on_rank_0_reaches_the_waiting_ranks() -> None:
    messages = spawn(failing_main_worker)
    assert messages[0].startswith("ZeroDivisionError")
    assert messages[1:] == ["RuntimeError: rank 0 failed during the probes: ZeroDivisionError: division by zero"] * 2


def test_rank_0_trains_the_probes_with_every_cpu_it_may_use() -> None:
    from auxssl.eval.sharded import every_cpu_thread

    before = torch.get_num_threads()
    torch.set_num_threads(1)  # what torchrun's OMP_NUM_THREADS=1 leaves
    try:
        with every_cpu_thread() as threads:
            assert torch.get_num_threads() == threads == len(os.sched_getaffinity(0))
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_each_rank_decodes_only_its_shard_of_the_evaluation_images(tmp_path: Path) -> None:
    """The trainer decodes the evaluation sets once per run; under 3 processes each rank's decoded copy holds its
    third of the images, not the whole set."""
    from auxssl.data import digits
    from auxssl.eval.sharded import EvalGroup

    test = digits("test")
    images = {rank: EvalGroup(rank, WORLD, None, 1.0).shard(test).to_uint8() for rank in range(WORLD)}
    assert sum(len(i[0]) for i in images.values()) == len(test)
    whole, _ = test.to_uint8()
    for rank, (decoded, rows) in images.items():
        assert torch.equal(decoded, whole[rank::WORLD]) and np.array_equal(rows, np.arange(len(decoded)))
