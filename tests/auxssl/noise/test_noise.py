"""Noise control: false-negative elimination and injection, false-positive injection, good crops, measured rates.

Every rate is checked against a count written differently here (loops, hand counts, binomial bounds), and the
masked losses against losses computed without the removed negatives.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from auxssl.config import ConfigError, NoiseConfig, load_config
from auxssl.data import get_recipe
from auxssl.data.datasets import ArrayDataset, ImageSubset
from auxssl.data.loaders import GoodCrops, build_loader
from auxssl.data.loaders.tensor_loader import KorniaViews
from auxssl.data.recipes import Recipe, ViewSpec
from auxssl.engine.build import build_train_loader, random_subset
from auxssl.eval.tracker import WindowMeans
from auxssl.noise.control import NoiseControl
from auxssl.noise.crops import force_good_crops, paired_iou
from auxssl.noise.negatives import false_negative_rates
from auxssl.noise.sampling import ClassGroupedOrder
from baselines import METHODS, Batch, ContrastSets
from baselines.losses import moco_loss


def labelled_dataset(n: int = 200, classes: int = 5, size: int = 16, seed: int = 0) -> ArrayDataset:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    return ArrayDataset(images, np.arange(n) % classes, [str(c) for c in range(classes)])


class InBatch:
    """A stand-in method whose negatives are the batch itself (as SimCLR's on one process)."""

    def contrast_sets(self, batch: Batch) -> ContrastSets:
        return ContrastSets(batch.index, batch.index)


def batch_of(index: list[int] | torch.Tensor, size: int = 8) -> Batch:
    index = torch.as_tensor(index)
    return Batch([torch.rand(len(index), 3, size, size) for _ in range(2)], index=index)


# ------------------------------------------------------------------------------------------- false negatives
def test_measured_false_negative_rate_matches_a_hand_count() -> None:
    labels = torch.tensor([0, 0, 1, 1, 1, 2])
    index = torch.arange(6)
    rates = false_negative_rates(index, index, labels)
    # ordered pairs i != j of one class: class 0 → 2, class 1 → 6, class 2 → 0; of 6·5 = 30 pairs
    assert rates["noise/fn_rate_raw"].item() == pytest.approx(8 / 30)
    weight = torch.ones(6, 6)
    weight[2, 3] = weight[3, 2] = 0.0  # two of the same-class pairs removed
    rates = false_negative_rates(index, index, labels, weight)
    assert rates["noise/fn_rate"].item() == pytest.approx(6 / 28)
    unlabelled = false_negative_rates(index, index, torch.full((6,), -1))  # nothing to count: NaN (no host sync),
    assert all(torch.isnan(v) for v in unlabelled.values())                 # which the logged means leave out
    window = WindowMeans()
    window.add("noise/fn_rate", unlabelled["noise/fn_rate"])
    window.add("noise/fn_rate", torch.tensor(0.25))
    assert window.means() == {"noise/fn_rate": 0.25}


def test_false_negative_rate_falls_with_the_revealed_fraction_to_zero() -> None:
    data = labelled_dataset(200, classes=5)
    index = torch.from_numpy(np.random.default_rng(1).permutation(200)[:64])
    previous = math.inf
    for p in (0.0, 0.3, 0.5, 0.8, 1.0):
        control = NoiseControl(NoiseConfig(fn_elimination=p), data, seed=0)
        batch = batch_of(index)
        rates = control.prepare(batch, InBatch(), step=0)
        expected = false_negative_rates(index, index, torch.from_numpy(data.labels))["noise/fn_rate_raw"]
        assert rates["noise/fn_rate_raw"].item() == pytest.approx(expected.item())
        assert rates["noise/fn_rate"].item() <= previous + 1e-9
        previous = rates["noise/fn_rate"].item()
        revealed = (control.revealed >= 0).float().mean().item() if control.revealed is not None else 0.0
        assert revealed == pytest.approx(p, abs=0.01)
    assert previous == 0.0


def test_full_elimination_equals_ntxent_without_the_same_class_negatives() -> None:
    """p = 1: the masked SimCLR loss equals NT-Xent computed anchor by anchor over different-class negatives only."""
    data = labelled_dataset(40, classes=4)
    torch.manual_seed(0)
    z1, z2 = torch.randn(12, 8), torch.randn(12, 8)
    index = torch.arange(12) * 3 % 40
    control = NoiseControl(NoiseConfig(fn_elimination=1.0), data, seed=0)
    batch = batch_of(index)
    rates = control.prepare(batch, InBatch(), step=0)
    assert rates["noise/fn_rate"].item() == 0.0 and rates["noise/fn_rate_raw"].item() > 0.15

    from baselines.losses import nt_xent_loss

    masked = nt_xent_loss(z1, z2, 0.5, batch.negative_weight)
    labels = torch.from_numpy(data.labels)[index]
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    n, terms = 12, []
    for a in range(2 * n):
        positive = (a + n) % (2 * n)
        kept = [k for k in range(2 * n) if k != a and (k == positive or labels[k % n] != labels[a % n])]
        logits = torch.stack([z[a] @ z[k] / 0.5 for k in kept])
        terms.append(-(logits[kept.index(positive)] - torch.logsumexp(logits, 0)))
    torch.testing.assert_close(masked, torch.stack(terms).mean())


def test_moco_queue_mask_removes_the_same_class_keys() -> None:
    """The (B, K) mask over the queue equals dropping those keys from the queue."""
    data = labelled_dataset(50, classes=5)
    torch.manual_seed(0)
    from tests.conftest import TinyBackbone

    moco = METHODS["moco_v2"](TinyBackbone(), proj_hidden_dim=16, proj_dim=8, queue_size=20)
    moco.queues[0].index.copy_(torch.arange(20) * 2)
    moco.queues[1].index.copy_(torch.arange(20) * 2)
    moco.queues[0].index[-3:] = -1  # unwritten rows stay negatives
    moco.queues[1].index[-3:] = -1
    batch = batch_of(torch.arange(6) + 30, size=8)
    NoiseControl(NoiseConfig(fn_elimination=1.0), data, seed=0).prepare(batch, moco, step=0)
    weight = batch.negative_weight
    assert weight.shape == (6, 20)
    labels = torch.from_numpy(data.labels)
    for i in range(6):
        for k in range(20):
            queued = int(moco.queues[0].index[k])
            expected = 0.0 if queued >= 0 and labels[queued] == labels[30 + i] else 1.0
            assert weight[i, k].item() == expected
    q, key, queue = torch.randn(6, 8), torch.randn(6, 8), F.normalize(torch.randn(20, 8), dim=1)
    masked = moco_loss(q, key, queue, 0.2, weight)
    per_sample = [moco_loss(q[i : i + 1], key[i : i + 1], queue[weight[i] > 0], 0.2) for i in range(6)]
    torch.testing.assert_close(masked, torch.stack(per_sample).mean())


def test_fn_elimination_is_refused_for_a_method_without_negatives() -> None:
    with pytest.raises(ConfigError, match="simclr"):
        load_config(None, ["model.method=byol", "noise.fn_elimination=0.5"])
    with pytest.raises(ConfigError, match="classes_per_batch"):
        load_config(None, ["data.batch_size=100", "noise.fn_injection.classes_per_batch=3"])
    with pytest.raises(ConfigError, match="fp_injection"):
        load_config(None, ["noise.fp_injection=1.5"])


def test_classes_per_batch_order_is_a_deterministic_permutation_of_few_class_batches() -> None:
    labels = np.arange(1000) % 10
    order = ClassGroupedOrder(labels, classes_per_batch=2, batch_size=64, seed=3)
    first = order(0)
    assert sorted(first.tolist()) == list(range(1000))
    assert torch.equal(first, order(0)) and not torch.equal(first, order(1))
    full_batches = (1000 - 10 * (100 % 32)) // 64
    for b in range(full_batches):
        assert len(np.unique(labels[first[b * 64 : (b + 1) * 64].numpy()])) <= 2


def test_fn_injection_raises_the_measured_false_negative_rate() -> None:
    data = labelled_dataset(640, classes=10, size=8)
    config = load_config(None, ["data.batch_size=64", "noise.fn_injection.classes_per_batch=2", "data.recipe=simclr",
                                "data.image_size=8"])
    control = NoiseControl(config.noise, data, seed=0)
    loader = build_train_loader(config, data, torch.device("cpu"), noise=control)
    rates = [control.prepare(batch, InBatch(), step)["noise/fn_rate_raw"].item()
             for step, batch in zip(range(5), loader)]
    natural = NoiseControl(NoiseConfig(), data, seed=0)
    plain_config = load_config(None, ["data.batch_size=64", "data.image_size=8"])
    plain = build_train_loader(plain_config, data, torch.device("cpu"))
    base = [natural.prepare(batch, InBatch(), step)["noise/fn_rate_raw"].item() for step, batch in zip(range(5), plain)]
    assert min(rates) > 0.45 and max(base) < 0.2  # ≈ (64/2 − 1)/63 against ≈ 1/10


# ------------------------------------------------------------------------------------------- false positives
def test_fp_injection_rate_matches_q_within_a_binomial_tolerance() -> None:
    data = labelled_dataset(256, classes=4)
    control = NoiseControl(NoiseConfig(fp_injection=0.2), data, seed=0)
    labels = torch.from_numpy(data.labels)
    injected_total, samples = 0, 0
    for step in range(40):
        index = torch.randperm(256, generator=torch.Generator().manual_seed(step))[:64]
        batch = batch_of(index)
        second = batch.views[1].clone()
        rate = control.prepare(batch, InBatch(), step)["noise/fp_rate"].item()
        changed = (batch.views[1] != second).flatten(1).any(dim=1)
        for i in changed.nonzero().flatten().tolist():  # the new view is another image's, of another class
            donor = [j for j in range(64) if torch.equal(batch.views[1][i], second[j])]
            assert donor and all(labels[index[j]] != labels[index[i]] for j in donor)
        assert rate == pytest.approx(changed.float().mean().item())
        injected_total += int(changed.sum())
        samples += 64
    sigma = math.sqrt(0.2 * 0.8 / samples)
    assert abs(injected_total / samples - 0.2) < 4 * sigma


def test_an_injected_view_brings_its_crop_box_and_augmentation_parameters() -> None:
    """fp injection swaps a sample's second view for another image's: that view's crop box and augmentation
    parameters move with it (the box stayed behind before, describing a crop the sample no longer has)."""
    from auxssl.noise.positives import inject_false_positives

    batch = Batch([torch.arange(8.0)[:, None, None, None].expand(8, 3, 2, 2).clone() for _ in range(2)],
                  crop_boxes=torch.stack([torch.rand(8, 4), torch.arange(8.0)[:, None].expand(8, 4)]),
                  aug_params={"blur_sigma": torch.stack([torch.rand(8), torch.arange(8.0)])})
    first_boxes = batch.crop_boxes[0].clone()
    injected = inject_false_positives(batch, 0.5, None, torch.Generator().manual_seed(0))
    assert injected.any() and not injected.all()
    source = batch.views[1][:, 0, 0, 0]  # which image's second view each sample now holds
    assert torch.equal(batch.crop_boxes[1][:, 0], source) and torch.equal(batch.crop_boxes[0], first_boxes)
    assert torch.equal(batch.aug_params["blur_sigma"][1], source)
    assert torch.equal(source != torch.arange(8.0), injected)


def test_batch_to_moves_extra_tensors_and_augmentation_parameters() -> None:
    moved = Batch([torch.zeros(2, 3, 4, 4)] * 2, extra={"flip": torch.ones(2), "note": "kept"},
                  aug_params={"jitter": torch.ones(2, 2, 4)}).to("meta")
    assert moved.extra["flip"].device.type == "meta" and moved.extra["note"] == "kept"
    assert moved.aug_params["jitter"].device.type == "meta"


def test_knobs_off_leave_loss_and_gradients_bit_identical(tiny_backbone) -> None:
    torch.manual_seed(0)
    simclr = METHODS["simclr"](tiny_backbone, proj_hidden_dim=16, proj_dim=8)
    data = labelled_dataset(64, classes=4)

    def loss_and_grads(with_control: bool) -> tuple[torch.Tensor, list[torch.Tensor]]:
        batch = batch_of(torch.arange(16))
        torch.manual_seed(5)
        batch.views = [torch.rand(16, 3, 8, 8) for _ in range(2)]
        if with_control:
            metrics = NoiseControl(NoiseConfig(), data, seed=0).prepare(batch, simclr, step=0)
            assert batch.negative_weight is None and "noise/fn_rate_raw" in metrics
        simclr.zero_grad()
        loss = simclr(batch)["loss"]
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in simclr.parameters() if p.grad is not None]

    plain, with_control = loss_and_grads(False), loss_and_grads(True)
    assert torch.equal(plain[0], with_control[0])
    assert all(torch.equal(a, b) for a, b in zip(plain[1], with_control[1]))


def test_explicit_crop_draws_reproduce_the_kornia_pipeline() -> None:
    """Drawing every step's parameters explicitly (to know the boxes and the augmentation parameters) leaves the
    augmented views unchanged; BYOL's recipe has every kind of step (crop, flip, jitter, grayscale, blur,
    solarize)."""
    recipe = get_recipe("byol_imagenet", 16)
    views = KorniaViews(recipe, (0.5,) * 3, (0.25,) * 3, torch.device("cpu"))
    images = torch.randint(0, 256, (8, 3, 16, 16), dtype=torch.uint8)
    explicit, boxes, _, _ = views(images, seed=11)
    with torch.random.fork_rng():
        torch.manual_seed(11)
        x = images.float() / 255
        whole = [augment(x) for augment in views.augmentations]
    assert all(torch.equal(a, b) for a, b in zip(explicit, whole))
    assert boxes.shape == (2, 8, 4) and bool((boxes[..., 2:] > boxes[..., :2]).all())


GEOMETRY_ONLY = Recipe("crop-only", (ViewSpec(size=16, flip_p=0.0, jitter_p=0.0, grayscale_p=0.0),) * 2)


def gradient_dataset(n: int = 32, size: int = 32) -> ArrayDataset:
    """Images whose red channel is the column and green channel the row, in pixels (×8): crops are readable."""
    ramp = np.arange(size, dtype=np.uint8) * 8
    image = np.zeros((size, size, 3), dtype=np.uint8)
    image[..., 0] = ramp[None, :]
    image[..., 1] = ramp[:, None]
    return ArrayDataset(np.repeat(image[None], n, axis=0), np.arange(n) % 2, ["a", "b"], mean=(0, 0, 0), std=(1, 1, 1))


@pytest.mark.parametrize("backend", ["tensor", "torchvision", "ffcv"])
def test_forced_pairs_are_good_and_the_boxes_are_where_the_crops_were_taken(backend: str, tmp_path) -> None:
    if backend == "ffcv":
        pytest.importorskip("ffcv")
    data = gradient_dataset()
    loader = build_loader(backend, data, GEOMETRY_ONLY, 32, num_workers=0 if backend == "torchvision" else 1,
                          good_crops=GoodCrops(1.0, 0.6), beton_path=tmp_path / "g.beton")
    batch = next(iter(loader))
    assert bool((paired_iou(batch.crop_boxes[0], batch.crop_boxes[1]) >= 0.6).all())
    for view, boxes in zip(batch.views, batch.crop_boxes):
        left_column = view[:, 0, :, 0].mean(dim=1) * 255 / 8  # ≈ x0 in pixels (+ half a source pixel per output px)
        top_row = view[:, 1, 0, :].mean(dim=1) * 255 / 8
        assert torch.allclose(left_column, boxes[:, 0].cpu() * 32, atol=1.5)
        assert torch.allclose(top_row, boxes[:, 1].cpu() * 32, atol=1.5)


def test_natural_pairs_are_measured_and_not_forced() -> None:
    data = gradient_dataset(64)
    batch = next(iter(build_loader("tensor", data, GEOMETRY_ONLY, 64)))
    iou = paired_iou(batch.crop_boxes[0], batch.crop_boxes[1])
    assert 0.05 < float((iou < 0.5).float().mean()) < 0.95
    control = NoiseControl(NoiseConfig(), data, seed=0)
    measured = control.prepare(batch, InBatch(), 0)["noise/fp_rate"].item()
    assert measured == pytest.approx(float((iou < 0.5).float().mean()))


def test_force_good_crops_falls_back_to_the_reference_when_nothing_qualifies() -> None:
    reference = torch.tensor([[0, 0, 3, 3], [4, 4, 20, 20]])
    g = torch.Generator().manual_seed(0)
    side = torch.tensor([32, 32])
    good = force_good_crops(reference, side, side, (0.5, 1.0), (0.75, 4 / 3), 0.9, g)
    assert torch.equal(good[0], reference[0])  # a 3×3 crop cannot be matched by crops of half the image or more


# ------------------------------------------------------------------------------------------- indices
def test_batch_index_is_the_source_index_under_subset_and_shard() -> None:
    data = labelled_dataset(300, classes=3)
    subset = random_subset(data, 120)
    config = load_config(None, ["data.batch_size=20", "data.image_size=16"])
    for backend in ("tensor", "torchvision"):
        config.data.backend = backend
        config.data.num_workers = 0
        loader = build_train_loader(config, subset, torch.device("cpu"), rank=1, world_size=2)
        seen = torch.cat([b.index for b in loader])
        shard = subset.source_indices()[1::2]
        assert set(seen.tolist()) <= set(shard.tolist()) and len(seen) == 60
        assert seen.max() >= 120  # source indices, not positions in the subset
    nested = ImageSubset(subset, np.array([5, 7]))
    assert nested.source_indices().tolist() == subset.source_indices()[[5, 7]].tolist()


# ------------------------------------------------------------------------------------------- end to end
@pytest.mark.parametrize(
    ("config", "knob", "levels"),
    [("noise_fn_elimination_simclr_cifar10.yaml", "noise.fn_elimination", (0.0, 1.0)),
     ("noise_good_crops_byol_cifar10.yaml", "noise.good_crop_fraction", (0.0, 1.0))],
)
def test_noise_table_configs_train_and_report_accuracy_against_measured_noise(tmp_path, config, knob, levels) -> None:
    """Each table's config trains end to end on a tiny budget; the report keeps the knob settings apart and puts the
    measured rates next to the accuracy."""
    from pathlib import Path

    from auxssl.engine.trainer import train
    from auxssl.eval.report import write_report
    from auxssl.eval.tracker import read_metrics

    path = Path(__file__).parents[3] / "experiments" / "configs" / config
    for level in levels:
        overrides = [f"name=run{level}", f"output_dir={tmp_path}", "data.dataset=digits", "data.download=false",
                     "data.image_size=16", "data.batch_size=32", "data.train_subset=256", "eval.test_subset=64",
                     "model.width=8", "model.backbone=resnet10", "train.epochs=1", "train.progress=false",
                     "eval.linear=false", "train.precision=fp32", f"{knob}={level}"]
        train(load_config(path, overrides))
    records = {level: read_metrics(tmp_path / f"run{level}", "train") for level in levels}
    key = "noise/fn_rate" if "fn_elimination" in knob else "noise/fp_rate"
    assert all(key in r for r in records[levels[0]])
    assert all(r[key] == 0.0 for r in records[1.0]) and all(r[key] > 0.0 for r in records[0.0])
    report = write_report([tmp_path], tmp_path / "report")
    text = report.markdown.read_text()
    assert "Measured noise and accuracy" in text and f"[{knob.split('.')[1]}=1.0]" in text
    assert (tmp_path / "report" / "knn_vs_noise.png").exists()


# ------------------------------------------------------------------------ the two readings of Table 1, measured
@pytest.mark.parametrize("mode", ["images", "pairs"])
def test_both_readings_of_fn_elimination_log_the_share_of_false_negatives_removed(mode: str) -> None:
    """"images": revealing a fraction p of the images removes a same-class pair only when both are revealed, about
    p² of the false negatives; "pairs": each false-negative pair is removed with probability p. The logged
    ``noise/fn_removed`` is that share, and ``noise/fn_rate`` follows the renormalised expectation
    f(1 − s) / (1 − f·s) for a raw rate f and a removed share s (the kept negatives shrink too)."""
    p, n = 0.5, 2000
    data = labelled_dataset(n, classes=10, size=8)
    config = NoiseConfig(fn_elimination=p, fn_elimination_mode=mode)
    control = NoiseControl(config, data, seed=0)
    batch = batch_of(torch.arange(0, n, 4))  # 500 images, 50 per class
    rates = control.prepare(batch, InBatch(), step=0)
    removed, raw, kept = (rates[k].item() for k in ("noise/fn_removed", "noise/fn_rate_raw", "noise/fn_rate"))
    expected = p * p if mode == "images" else p
    assert abs(removed - expected) < 0.03, removed
    assert kept == pytest.approx(raw * (1 - removed) / (1 - raw * removed), rel=1e-4)
    weight = batch.negative_weight
    labels = batch.index % 10
    assert bool((weight[labels[:, None] != labels[None, :]] == 1).all())  # only same-class pairs are ever removed


def test_fn_removed_is_zero_without_elimination_and_one_when_everything_is_revealed() -> None:
    labels = torch.tensor([0, 0, 1, 1, 1, 2])
    index = torch.arange(6)
    assert false_negative_rates(index, index, labels)["noise/fn_removed"].item() == 0
    same = (labels[:, None] == labels[None, :]).float()
    assert false_negative_rates(index, index, labels, 1 - same)["noise/fn_removed"].item() == 1


def test_crop_overlap_measures_separate_content_from_scale() -> None:
    """Three hand-built pairs: a small crop inside a large one (IoU 0.25 but contained: same content, other
    scale), two disjoint crops, and two half-overlapping equal crops (IoU 1/3, half of each in the other)."""
    from auxssl.noise.positives import crop_overlap_rates

    first = torch.tensor([[0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 0.4, 0.4], [0.0, 0.0, 0.5, 0.5]])
    second = torch.tensor([[0.25, 0.25, 0.75, 0.75], [0.6, 0.6, 1.0, 1.0], [0.25, 0.0, 0.75, 0.5]])
    rates = {k: v.item() for k, v in crop_overlap_rates(torch.stack([first, second])).items()}
    assert rates["noise/crop_iou_low"] == pytest.approx(1.0)  # 0.25, 0, 1/3: all below 0.5
    assert rates["noise/crop_ios_low"] == pytest.approx(1 / 3)  # only the disjoint pair shows different content
    assert rates["noise/crop_contained"] == pytest.approx(1 / 3)
    assert rates["noise/crop_disjoint"] == pytest.approx(1 / 3)
