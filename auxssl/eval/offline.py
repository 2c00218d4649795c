"""Offline evaluation of a saved backbone: load weights, extract features once, run the chosen evaluators."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from auxssl.data.datasets import ImageDataset
from auxssl.engine.checkpoint import load_checkpoint, resolve_checkpoint
from auxssl.errors import InputError
from auxssl.eval.evaluators import Evaluator, Features, offline_evaluators
from auxssl.eval.features import extract_features_and_rows
from auxssl.eval.knn import KNNProtocol
from auxssl.eval.linear import ProbeConfig
from auxssl.eval.sharded import EvalGroup, every_cpu_thread
from baselines.backbones import build_backbone

#: Suffix of the settings file `auxssl export` writes beside exported weights (``backbone.pt`` → ``backbone.json``).
SETTINGS_SUFFIX = ".json"


def trained_settings(config: dict) -> dict[str, Any]:
    """How a run's backbone was built and evaluated, from its resolved config: architecture (``backbone``,
    ``cifar_stem``, ``width``, ``backbone_args``) and evaluation protocol (``image_size``, ``dataset``, ``root``, and
    the fixed random subsets of the kNN bank and the test split: ``bank_subset``, ``test_subset``; the kNN's
    ``knn_k`` and ``knn_temperature``)."""
    model, data, evaluation = (config.get(k) or {} for k in ("model", "data", "eval"))
    separate = evaluation.get("dataset") is not None
    own_bank = not separate and evaluation.get("bank", "train") == "train"
    return {
        "backbone": model.get("backbone"), "cifar_stem": model.get("cifar_stem"), "width": model.get("width"),
        "backbone_args": model.get("backbone_args") or {},
        "image_size": evaluation.get("image_size") or data.get("image_size"),
        "dataset": evaluation["dataset"] if separate else data.get("dataset"),
        "root": evaluation.get("root") if separate else data.get("root"),
        "bank_subset": data.get("train_subset") if own_bank else None,
        "test_subset": evaluation.get("test_subset"),
        "knn_k": evaluation.get("knn_k"), "knn_temperature": evaluation.get("knn_temperature"),
    }


def checkpoint_settings(path: str | Path, state: dict) -> dict[str, Any]:
    """`trained_settings` of a training checkpoint (from the config it holds) or of exported weights (from the
    settings file beside them, `SETTINGS_SUFFIX`); ``{}`` for weights that come with neither."""
    if isinstance(state.get("config"), dict):
        return trained_settings(state["config"])
    sidecar = Path(path).with_suffix(SETTINGS_SUFFIX)
    if sidecar.is_file():
        try:
            return json.loads(sidecar.read_text())
        except json.JSONDecodeError as err:
            raise InputError(f"{sidecar}: not a settings file written by auxssl export ({err})") from None
    return {}


def load_backbone(path: str | Path, arch: str | None = None, cifar_stem: bool | None = None, width: int | None = None,
                  options: dict | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """A backbone from a plain state_dict (``auxssl export``) or a training checkpoint holding ``"backbone"`` (a run
    directory: its last one), and the settings it was built with (`checkpoint_settings`, overridden by the
    arguments that are not None).

    Arguments left as None come from the checkpoint (a training checkpoint's config, or the settings file that
    ``auxssl export`` writes beside the weights), else default to a ResNet-18 with the CIFAR stem at width 64.
    """
    path = resolve_checkpoint(path)
    state = load_checkpoint(path)
    settings = checkpoint_settings(path, state)
    if isinstance(state.get("backbone"), dict):
        state = state["backbone"]
    arch = arch or settings.get("backbone") or "resnet18"
    if cifar_stem is None:
        cifar_stem = True if settings.get("cifar_stem") is None else settings["cifar_stem"]
    width = width or settings.get("width") or 64
    options = options if options is not None else settings.get("backbone_args") or None
    try:
        backbone = build_backbone(arch, cifar_stem=cifar_stem, width=width, options=options)
    except (ValueError, ImportError) as err:
        raise InputError(f"backbone {arch}: {err}") from err
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise InputError(f"{path} holds neither a backbone state_dict nor an auxssl training checkpoint")
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    problem = f"{path} does not hold {arch} (cifar_stem={cifar_stem}, width={width}) weights"
    try:
        missing, unexpected = backbone.load_state_dict(state, strict=False)
    except RuntimeError as err:  # shape mismatches
        raise InputError(f"{problem}: {str(err).splitlines()[1].strip()}") from err
    if missing or unexpected:
        raise InputError(f"{problem}: missing {missing[:5]}, unexpected {unexpected[:5]}")
    used = {**settings, "backbone": arch, "cifar_stem": cifar_stem, "width": width, "backbone_args": options or {}}
    return backbone, used


def evaluate_backbone(
    backbone: nn.Module,
    train: ImageDataset,
    test: ImageDataset,
    *,
    evaluators: Sequence[Evaluator] | None = None,
    knn: KNNProtocol | None = KNNProtocol(),
    linear: ProbeConfig | None = None,
    mlp: ProbeConfig | None = None,
    projector: nn.Sequential | None = None,
    device: str | torch.device = "cpu",
    image_size: int | None = None,
    decoded: tuple[tuple[torch.Tensor, np.ndarray], tuple[torch.Tensor, np.ndarray]] | None = None,
    precision: str = "auto",
    group: EvalGroup | None = None,
    num_workers: int = 2,
) -> dict[str, float]:
    """Features of both splits extracted once (evaluation transform), then every evaluator; accuracies in %.

    ``evaluators``: the `Evaluator` objects to run (`auxssl.eval.evaluators`); without them, the ones ``knn``,
    ``linear``, ``mlp`` and ``projector`` choose (`offline_evaluators`: kNN by default; ``projector``, a linear
    probe on each of its layers with ``linear``'s settings).
    ``image_size``: the side the images are resized to before the backbone (None: as stored). Evaluate at the
    size the backbone was trained at: the same weights score very differently at another resolution.
    ``decoded``: the two splits' ``to_uint8()`` results, for callers that evaluate repeatedly (the trainer).
    Without ``decoded``, images not already in memory are streamed (memory bounded by a batch and the features).
    ``precision``: of the feature extraction (`extract_features`). The kNN runs on ``device``.
    ``group``: under torch.distributed (a collective call), every process extracts the features of its shards
    (`EvalGroup.shard` of ``train`` and ``test``; ``decoded`` holds those shards' images), sharded evaluators
    (the kNN) run split over the ranks and the others on rank 0, on the gathered features
    (`auxssl.eval.sharded`); every rank returns the results.
    ``num_workers``: processes decoding streamed images (the run's ``data.num_workers``).
    """
    if evaluators is None:
        evaluators = offline_evaluators(knn, linear, mlp, projector)
    if group is not None:
        train, test = group.shard(train), group.shard(test)
    device = torch.device(device)
    (train_images, train_rows), (test_images, test_rows) = decoded or ((None, None), (None, None))
    common = dict(device=device, image_size=image_size, precision=precision, num_workers=num_workers)
    train_x, train_y, train_rows = extract_features_and_rows(backbone, train, images=train_images, rows=train_rows,
                                                             **common)
    test_x, test_y, test_rows = extract_features_and_rows(backbone, test, images=test_images, rows=test_rows,
                                                          **common)
    highest = [int(train_y.max()) if len(train_y) else -1, int(test_y.max()) if len(test_y) else -1]
    if group is not None:
        highest = group.highest(highest, device)
    if min(highest) < 0:
        raise InputError(f"evaluation needs labels: {train.name if highest[0] < 0 else test.name} has none")
    num_classes = max(highest) + 1
    local = Features(train_x, train_y, test_x, test_y, num_classes, device)
    results: dict[str, float] = {}
    for evaluator in (e for e in evaluators if e.sharded or group is None):
        results.update(evaluator(local, group))
    on_gathered = [e for e in evaluators if not e.sharded]
    if group is None or not on_gathered:
        return results
    # the features of every shard, gathered on rank 0 only and put back in dataset order
    parts = group.gather_on_main([(train_x, train_y, train.indices[train_rows]),
                                  (test_x, test_y, test.indices[test_rows])])

    def on_main() -> dict:
        (train_all, train_labels), (test_all, test_labels) = (_in_dataset_order([p[split] for p in parts])
                                                              for split in (0, 1))
        gathered = Features(train_all, train_labels, test_all, test_labels, num_classes, device)
        with every_cpu_thread():
            return {name: value for e in on_gathered for name, value in e(gathered).items()}

    return {**results, **group.run_on_main(on_main, "probes")}


def _in_dataset_order(parts: list[tuple[torch.Tensor, torch.Tensor, np.ndarray]]) -> tuple[torch.Tensor, torch.Tensor]:
    """The shards' ``(features, labels, dataset rows)`` merged into dataset order."""
    rows = np.concatenate([p[2] for p in parts])
    order = torch.from_numpy(np.argsort(rows, kind="stable"))
    return torch.cat([p[0] for p in parts])[order], torch.cat([p[1] for p in parts])[order]
