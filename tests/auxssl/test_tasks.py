"""Rotation and jigsaw inputs against hand-written pixel layouts; label statistics and determinism."""

from __future__ import annotations

import pytest
import torch

from auxssl.tasks import JigsawPrediction, RotationPrediction, permute_tiles, rotate
from baselines import Batch

GRID = torch.tensor([[0.0, 1, 2], [3, 4, 5], [6, 7, 8]])
# the same image after k counter-clockwise quarter turns, written out by hand
EXPECTED = {
    0: [[0, 1, 2], [3, 4, 5], [6, 7, 8]],
    1: [[2, 5, 8], [1, 4, 7], [0, 3, 6]],
    2: [[8, 7, 6], [5, 4, 3], [2, 1, 0]],
    3: [[6, 3, 0], [7, 4, 1], [8, 5, 2]],
}


def test_rotate_matches_hand_written_layouts_per_image() -> None:
    images = GRID.expand(4, 2, 3, 3).clone()
    images[:, 1] += 10  # a second channel, rotated the same way
    k = torch.tensor([2, 0, 3, 1])
    out = rotate(images, k)
    for i, turns in enumerate(k.tolist()):
        expected = torch.tensor(EXPECTED[turns], dtype=torch.float)
        torch.testing.assert_close(out[i, 0], expected)
        torch.testing.assert_close(out[i, 1], expected + 10)


def test_random_mode_labels_match_the_applied_rotation() -> None:
    task = RotationPrediction(generator=torch.Generator().manual_seed(0))
    images = torch.rand(64, 3, 8, 8)
    rotated, labels = task.make_inputs(images)
    assert labels.shape == (64,) and labels.dtype == torch.long
    for i in range(64):  # undoing the labelled rotation must give back the original
        torch.testing.assert_close(torch.rot90(rotated[i], -int(labels[i]), dims=(-2, -1)), images[i])


def test_random_mode_draws_uniform_independent_rotations() -> None:
    task = RotationPrediction(generator=torch.Generator().manual_seed(1))
    labels = task.random_labels(8000, torch.device("cpu"))
    counts = torch.bincount(labels, minlength=4).float()
    # binomial(8000, 1/4): std ≈ 38.7; 5 std tolerance
    assert torch.all((counts - 2000).abs() < 5 * 38.7), counts
    v1, v2 = task.random_labels(64, torch.device("cpu")), task.random_labels(64, torch.device("cpu"))
    assert not torch.equal(v1, v2)


def test_all_mode_yields_every_rotation_of_every_image() -> None:
    task = RotationPrediction(mode="all")
    images = GRID.expand(2, 1, 3, 3).clone()
    images[1] = images[1] * -1
    rotated, labels = task.make_inputs(images)
    assert labels.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    for j, turns in enumerate(labels.tolist()):
        sign = 1 if j % 2 == 0 else -1
        torch.testing.assert_close(rotated[j, 0], sign * torch.tensor(EXPECTED[turns], dtype=torch.float))


def test_views_and_size_select_the_rotated_copies() -> None:
    task = RotationPrediction(views=(0, 2), size=8)
    views = [torch.full((5, 3, 16, 16), float(v)) for v in range(3)]
    images = task.select_views(Batch(views))
    assert [x.shape for x in images] == [(5, 3, 8, 8)] * 2
    assert images[0].eq(0).all() and images[1].eq(2).all()
    with pytest.raises(ValueError, match="views"):
        RotationPrediction(views=(0, 3)).select_views(Batch(views))


def test_seeded_generator_gives_identical_inputs() -> None:
    images = torch.rand(16, 3, 8, 8)
    a = RotationPrediction(generator=torch.Generator().manual_seed(7)).make_inputs(images)
    b = RotationPrediction(generator=torch.Generator().manual_seed(7)).make_inputs(images)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_rotation_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="mode"):
        RotationPrediction(mode="some")
    with pytest.raises(ValueError, match="square"):
        rotate(torch.rand(1, 3, 4, 6), torch.tensor([1]))


def test_permute_tiles_hand_written() -> None:
    image = torch.arange(16.0).view(1, 1, 4, 4)
    # tiles (row-major): 0 = [[0,1],[4,5]], 1 = [[2,3],[6,7]], 2 = [[8,9],[12,13]], 3 = [[10,11],[14,15]]
    swapped = permute_tiles(image, torch.tensor([[3, 2, 1, 0]]))
    expected = torch.tensor([[10.0, 11, 8, 9], [14, 15, 12, 13], [2, 3, 0, 1], [6, 7, 4, 5]])
    torch.testing.assert_close(swapped[0, 0], expected)
    torch.testing.assert_close(permute_tiles(image, torch.tensor([[0, 1, 2, 3]])), image)


def test_jigsaw_labels_index_the_applied_permutation() -> None:
    task = JigsawPrediction(generator=torch.Generator().manual_seed(0))
    assert task.permutations.shape == (24, 4) and task.permutations[0].tolist() == [0, 1, 2, 3]
    images = torch.rand(32, 3, 8, 8)
    shuffled, labels = task.make_inputs(images)
    for i in range(32):
        inverse = torch.argsort(task.permutations[labels[i]])
        torch.testing.assert_close(permute_tiles(shuffled[i : i + 1], inverse[None]), images[i : i + 1])
