"""Build the pieces of a run from its configuration: datasets, model, loader, evaluators and online probes."""

from __future__ import annotations

import logging
import os
import random
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn

from auxssl.config import RunConfig
from auxssl.data import build_loader, get_dataset, get_recipe, reveal_labels
from auxssl.data.datasets import ImageDataset, ImageSubset
from auxssl.data.loaders import MultiViewLoader, choose_backend, derive_seed
from auxssl.engine.schedules import ema_schedule, warmup_cosine
from auxssl.errors import InputError
from auxssl.eval.evaluators import Evaluator, offline_evaluators
from auxssl.eval.knn import KNNProtocol
from auxssl.eval.linear import OnlineLinearProbe, ProbeConfig
from auxssl.eval.projector import OnlineProjectorProbes
from auxssl.eval.sharded import EvalGroup
from auxssl.noise.control import NoiseControl
from auxssl.plugins import method_class, task_class
from auxssl.wrapper import AuxWrapper
from baselines import build_backbone
from baselines.backbones import feature_dim
from baselines.checkpointing import enable_activation_checkpointing

logger = logging.getLogger("auxssl")

#: Seed of the fixed random subsets (``data.train_subset``, ``eval.test_subset``): the same for every run.
SUBSET_SEED = 0


def random_subset(dataset: ImageDataset, size: int | None, seed: int = SUBSET_SEED) -> ImageDataset:
    """A fixed random sample of ``size`` images (seeded, independent of the run's seed so every run of a
    comparison sees the same images); the dataset itself when ``size`` is None or not smaller.

    Never the first N: folder datasets are sorted by class, so a prefix would hold a single class.
    """
    if size is None or size >= len(dataset):
        return dataset
    return ImageSubset(dataset, np.sort(np.random.default_rng(seed).permutation(len(dataset))[:size]))


class RunDatasets(NamedTuple):
    """The datasets of a run: what it trains on, what evaluation fits on (kNN bank, probes) and tests on."""

    train: ImageDataset
    bank: ImageDataset
    test: ImageDataset


def build_datasets(config: RunConfig) -> RunDatasets:
    """The training split (reduced to ``data.train_subset``), the evaluation bank (the training images, or the
    full training split with ``eval.bank: full_train``) and the test split (reduced to ``eval.test_subset``).

    With ``eval.dataset`` (a separate labelled evaluation set, e.g. to evaluate pre-training on an unlabelled
    folder), the bank is that dataset's train split and the test its test split."""
    data = config.data
    full_train = get_dataset(data.dataset, "train", data.root, data.download)
    if data.train_subset is not None and data.train_subset > len(full_train):
        raise InputError(f"data.train_subset={data.train_subset} exceeds the {len(full_train)} training images of "
                         f"{full_train.name}; leave it unset (null) to train on all of them")
    train = random_subset(full_train, data.train_subset)
    if config.eval.dataset is not None:
        bank = get_dataset(config.eval.dataset, "train", config.eval.root, data.download)
        test = get_dataset(config.eval.dataset, "test", config.eval.root, data.download)
    else:
        bank = full_train if config.eval.bank == "full_train" else train
        test = get_dataset(data.dataset, "test", data.root, data.download)
    if config.eval.test_subset is not None and config.eval.test_subset > len(test):
        raise InputError(f"eval.test_subset={config.eval.test_subset} exceeds the {len(test)} test images of "
                         f"{test.name}; leave it unset (null) to test on all of them")
    check_disjoint(bank, test)
    return RunDatasets(train, bank, random_subset(test, config.eval.test_subset))


def evaluation_data(config: RunConfig, bank: ImageDataset, test: ImageDataset, image_size: int,
                    precision: str) -> tuple[dict, str]:
    """What a run's evaluations ran on, as ``run.json`` records it (``evaluation["data"]``: two runs compare only
    where these agree) and as one readable line (``protocol["data"]``)."""
    evaluation = config.eval
    data = {
        "dataset": evaluation.dataset or config.data.dataset,
        "root": evaluation.root if evaluation.dataset else config.data.root, "image_size": image_size,
        "bank": evaluation.bank, "bank_size": len(bank), "test_subset": evaluation.test_subset,
        "test_size": len(test), "subset_seed": SUBSET_SEED, "feature_precision": precision,
    }
    if test.description:
        data["split"] = test.description
    text = (f"features at {image_size} px ({precision}); bank: {len(bank)} training images"
            f"{' (full training split)' if evaluation.bank == 'full_train' else ''}; test: {len(test)} "
            f"images{' (fixed random sample)' if evaluation.test_subset else ''}"
            f"{f' ({test.description})' if test.description else ''}")
    return data, text


def check_disjoint(bank: ImageDataset, test: ImageDataset) -> None:
    """Refuse an evaluation whose test images are also in its kNN bank / probe training set (a kNN would score
    images against themselves)."""
    if not (bank.labelled and test.labelled) or bank.source.fingerprint() != test.source.fingerprint():
        return
    shared = np.intersect1d(bank.source_indices(), test.source_indices())
    if len(shared):
        raise InputError(f"{len(shared)} of the {len(test)} test images ({test.name}) are also in the evaluation bank "
                         f"({bank.name}): name a separate test split (a test/ or val/ folder, or eval.dataset)")


def build_model(config: RunConfig) -> nn.Module:
    """The base method on its backbone, wrapped with the configured auxiliary tasks (if any); the backbone's stages
    checkpointed with ``train.activation_checkpointing``."""
    model = _method_with_tasks(config)
    if config.train.activation_checkpointing:
        try:
            enable_activation_checkpointing(model.backbone)
        except ValueError as err:
            raise InputError(f"train.activation_checkpointing: {err}") from None
    return model


def _method_with_tasks(config: RunConfig) -> nn.Module:
    try:
        backbone = build_backbone(config.model.backbone, cifar_stem=config.model.cifar_stem, width=config.model.width,
                                  options=config.model.backbone_args)
    except (ValueError, ImportError) as err:
        raise InputError(f"model.backbone={config.model.backbone}: {err}") from err
    try:
        method = method_class(config.model.method)(backbone, **config.model.method_args)
    except TypeError as err:
        raise InputError(f"model.method_args do not fit {config.model.method}: {err}") from err
    if not config.tasks:
        return method
    tasks = []
    for task in config.tasks:
        cls = task_class(task.name)
        # a task that normalises by the augmentation settings (AugSelf) declares it and gets the data recipe
        recipe = {"recipe": get_recipe(config.data.recipe, config.data.image_size)} if getattr(
            cls, "takes_recipe", False) else {}
        try:
            tasks.append(cls(weight=task.weight, **recipe, **task.args))
        except TypeError as err:
            raise InputError(f"tasks: args do not fit {task.name}: {err}") from err
    return AuxWrapper(method, tasks)


def process_seed(seed: int, rank: int, world_size: int) -> int:
    """The seed of one process's randomness (augmentations, rotation labels): ``seed`` itself in a single
    process, a distinct seed per rank under torch.distributed, so that sample *i* of every rank does not get the
    same crop, jitter and rotation. Deterministic for a given seed and world size."""
    return seed if world_size <= 1 else derive_seed(seed, rank, world_size) % 2**31  # numpy seeds are 32-bit


def memory_budget(config: RunConfig, device: torch.device) -> int:
    """Bytes the decoded data may take (``data.memory_budget_gb``; default a quarter of the device's memory)."""
    if config.data.memory_budget_gb is not None:
        return int(config.data.memory_budget_gb * 2**30)
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory // 4
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 4


def resolve_backend(config: RunConfig, train: ImageDataset, device: torch.device) -> str:
    """``data.backend``, with ``auto`` resolved by `choose_backend` against `memory_budget`."""
    if config.data.backend != "auto":
        return config.data.backend
    return choose_backend(train, config.data.image_size, memory_budget(config, device))


def build_train_loader(
    config: RunConfig, train: ImageDataset, device: torch.device, rank: int = 0, world_size: int = 1,
    noise: NoiseControl | None = None,
) -> MultiViewLoader:
    """The training loader; under torch.distributed each process loads its own disjoint share of the data, of the
    same size on every process (the last ``N mod W`` images of the epoch's order sit out).
    ``noise`` supplies the epoch order (batches grouped by class) and the good-crop forcing of noise control."""
    data = config.data
    recipe = get_recipe(data.recipe, data.image_size)
    labels = reveal_labels(train.labels, data.reveal_labels, config.train.seed) if data.reveal_labels > 0 else None
    if world_size > 1:
        if data.batch_size % world_size:
            raise InputError(f"data.batch_size={data.batch_size} must be divisible by the {world_size} processes")
        # ⌊N/W⌋ images each (as DistributedSampler(drop_last=True)): every rank runs the same number of steps
        shard = np.arange(rank, len(train) - len(train) % world_size, world_size)
        train = ImageSubset(train, shard)
        labels = None if labels is None else labels[shard]
    local_batch = data.batch_size // world_size
    loader = build_loader(
        resolve_backend(config, train, device), train, recipe, local_batch, labels=labels, device=device,
        seed=process_seed(config.train.seed, rank, world_size), num_workers=data.num_workers,
        order=None if noise is None else noise.order(np.asarray(train.labels), local_batch),
        good_crops=None if noise is None else noise.good_crops(),
    )
    if len(loader) == 0:
        readable = len(train) - getattr(loader, "skipped", 0)
        where = "" if world_size == 1 else f" of this process ({world_size} processes)"
        raise InputError(f"data.batch_size={data.batch_size} exceeds the {readable} readable training images{where}")
    return loader


def seed_everything(seed: int, deterministic: bool) -> None:
    """Seed every generator; ``deterministic``: deterministic kernels, else cuDNN autotuning (SSL batches keep
    one shape, so the tuned convolutions are reused every step)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = not deterministic


def warn_if_knn_bank_too_small(config: RunConfig, bank_size: int) -> None:
    """Say once, before training, when the kNN's k is not below the bank's size (every bank image would vote on
    every query)."""
    if config.eval.knn_k >= bank_size:
        logger.warning("eval.knn_k=%d is not below the %d images of the kNN bank: every bank image votes on every "
                       "query, which measures little (lower eval.knn_k)", config.eval.knn_k, bank_size)


def probed_projector(config: RunConfig, model: nn.Module, key: str) -> nn.Module | None:
    """The base method's projector when ``eval.<key>`` asks for per-layer probes (None when it does not); a method
    without one is refused naming the setting (`projector_layers` refuses one that is not an nn.Sequential)."""
    if not getattr(config.eval, key):
        return None
    projector = getattr(getattr(model, "base", model), "projector", None)
    if projector is None:
        raise InputError(f"eval.{key}: model.method={config.model.method} has no projector")
    return projector


def build_evaluators(config: RunConfig, model: nn.Module) -> list[Evaluator]:
    """The run's offline evaluators: the kNN at every evaluation; at the final one the linear probe
    (``eval.linear``) and the per-layer projector probes (``eval.projector_probes``)."""
    return offline_evaluators(KNNProtocol(config.eval.knn_k, config.eval.knn_temperature),
                              linear=ProbeConfig() if config.eval.linear else None,
                              projector=probed_projector(config, model, "projector_probes"))


class OnlineProbes(NamedTuple):
    """The probes trained during SSL on the base method's detached online features (None: not asked for)."""

    linear: OnlineLinearProbe | None
    projector_layers: OnlineProjectorProbes | None

    #: each probe's key in a training checkpoint (``online_probe``: the name checkpoints have always used)
    CHECKPOINT_KEYS = {"linear": "online_probe", "projector_layers": "online_projector_probes"}

    def active(self) -> list[OnlineLinearProbe | OnlineProjectorProbes]:
        return [p for p in self if p is not None]

    def checkpoint_state(self) -> dict[str, Any]:
        return {key: None if (probe := getattr(self, field)) is None else probe.checkpoint_state()
                for field, key in self.CHECKPOINT_KEYS.items()}

    def load_checkpoint_state(self, state: dict[str, Any]) -> None:
        """Restore the probes a checkpoint holds (a checkpoint written without one leaves it as initialised)."""
        for field, key in self.CHECKPOINT_KEYS.items():
            probe = getattr(self, field)
            if probe is not None and state.get(key) is not None:
                probe.load_checkpoint_state(state[key])


def build_online_probes(config: RunConfig, model: nn.Module, train_set: ImageDataset,
                        device: torch.device) -> OnlineProbes:
    """``eval.online_linear`` (on the backbone features) and ``eval.online_projector_probes`` (on each projector
    layer); both learn from the revealed labels."""
    asked = [k for k in ("online_linear", "online_projector_probes") if getattr(config.eval, k)]
    if not asked:
        return OnlineProbes(None, None)
    if config.data.reveal_labels <= 0:
        raise InputError(f"eval.{asked[0]} needs revealed labels: set data.reveal_labels > 0")
    num_classes = int(train_set.labels.max()) + 1
    linear = layers = None
    if config.eval.online_linear:
        linear = OnlineLinearProbe(feature_dim(model.backbone), num_classes).to(device)
    if (projector := probed_projector(config, model, "online_projector_probes")) is not None:
        layers = OnlineProjectorProbes(projector, num_classes).to(device)
    return OnlineProbes(linear, layers)


def build_schedules(config: RunConfig, model: nn.Module, base_lr: float,
                    steps_per_epoch: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The per-step learning rate (linear warm-up, cosine to ``optim.min_lr_ratio``) and, for a method with a
    momentum encoder (``base_tau``), the per-step EMA τ (cosine from ``base_tau`` to ``final_tau``)."""
    total = config.train.epochs * steps_per_epoch
    lr = warmup_cosine(base_lr, total, round(config.optim.warmup_epochs * steps_per_epoch),
                       base_lr * config.optim.min_lr_ratio)
    base_tau = getattr(model, "base_tau", None)
    tau = None if base_tau is None else ema_schedule(base_tau, total, getattr(model, "final_tau", 1.0))
    return lr, tau


def decode_eval_images(config: RunConfig, bank: ImageDataset, test: ImageDataset, image_size: int,
                       device: torch.device, group: EvalGroup | None = None) -> tuple | None:
    """The evaluation images decoded once (``to_uint8`` of the bank and the test split) when they fit
    `memory_budget` — much faster than decoding at every evaluation; None to stream them (memory bounded by a
    batch). Under torch.distributed each rank decodes and holds only its shards."""
    sets = (bank, test) if group is None else (group.shard(bank), group.shard(test))
    if sum(d.decoded_bytes(image_size) for d in sets) > memory_budget(config, device):
        return None
    return tuple(d.to_uint8(d.storage_size(image_size)) for d in sets)
