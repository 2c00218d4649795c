"""Typed run configuration, loaded from YAML with strict key checking and ``--set key=value`` overrides.

An unknown or misspelled key fails before anything runs, naming the key, the valid keys and the closest match.
The resolved configuration is saved in the run directory as ``config.yaml``.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from auxssl.errors import InputError


class ConfigError(InputError):
    """A configuration that cannot be used: unknown key, wrong type or invalid value."""


@dataclass
class DataConfig:
    dataset: str = "digits"  # see auxssl.data.DATASETS
    root: str | None = None
    download: bool = False
    # auto | torchvision | tensor | ffcv (auto: tensor when the decoded data fit memory_budget_gb)
    backend: str = "auto"
    # for backend auto and evaluation caching; None: a quarter of the device's memory
    memory_budget_gb: float | None = None
    recipe: str = "simclr"  # see auxssl.data.RECIPES
    image_size: int = 32
    batch_size: int = 256
    num_workers: int = 2
    train_subset: int | None = None  # use a fixed random sample of N training images (quick runs); None: all
    reveal_labels: float = 0.0  # fraction of training labels the loader reveals (online probe, noise control)


@dataclass
class ModelConfig:
    backbone: str = "resnet18"
    cifar_stem: bool = True
    width: int = 64  # ResNets: channels of the first stage (standard: 64); 32 or 16 for cheap CPU runs
    backbone_args: dict[str, Any] = field(default_factory=dict)  # timm backbones: timm.create_model options
    method: str = "byol"  # see baselines.METHODS
    method_args: dict[str, Any] = field(default_factory=dict)  # keyword arguments of the method class


@dataclass
class TaskConfig:
    name: str = "rotation"  # rotation | jigsaw
    weight: float = 0.1
    args: dict[str, Any] = field(default_factory=dict)  # keyword arguments of the task class


@dataclass
class OptimConfig:
    name: str = "sgd"  # sgd | lars | adamw
    lr: float = 0.05  # base learning rate for a batch of 256 (scaled linearly with the batch size)
    weight_decay: float = 5e-4
    momentum: float = 0.9
    warmup_epochs: float = 10.0
    min_lr_ratio: float = 0.0  # final lr = lr · min_lr_ratio (cosine)
    lars_eta: float = 0.02
    lars_clip_lr: bool = True  # solo-learn's clip_lr: per-layer rate min(eta·‖p‖/‖g‖, lr)
    betas: tuple[float, float] = (0.9, 0.999)


@dataclass
class TrainConfig:
    epochs: int = 200
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    precision: str = "auto"  # auto | fp32 | bf16 | fp16 (auto: bf16 where native, else fp32)
    channels_last: bool = True
    compile: bool = False
    activation_checkpointing: bool = False
    deterministic: bool = False
    log_every_steps: int = 20  # at least 1 (a record is also written at every epoch end)
    checkpoint_every_steps: int = 0  # 0: only at epoch ends
    checkpoint_every_epochs: int = 1  # 0: no periodic epoch-end checkpoints; the final one is always written
    # warn when stat/z_std (per-dimension std of normalised embeddings × √D; ≈ 1 healthy) falls below this
    collapse_threshold: float = 0.2
    progress: bool = True


@dataclass
class EvalConfig:
    every_epochs: int = 5  # evaluate every N epochs and after the last; 0: never evaluate
    at_start: bool = False  # also evaluate the initial weights (an epoch-0 record: the level training starts from)
    dataset: str | None = None  # a separate labelled evaluation set (kNN bank = its train split); None: data.dataset
    root: str | None = None  # its root (folder datasets, torchvision datasets, archive path)
    test_subset: int | None = None  # evaluate on a fixed random sample of N test images (quick runs); None: all
    image_size: int | None = None  # side at which features are extracted; None: data.image_size (the training size)
    precision: str = "auto"  # feature extraction: auto (bf16 where native, else fp32) | fp32 | bf16
    # kNN bank / probe training set: "train" (the training images, data.train_subset if set) | "full_train"
    bank: str = "train"
    knn_k: int = 200
    knn_temperature: float = 0.1
    linear: bool = False  # offline linear probe at the final evaluation
    projector_probes: bool = False  # at the final evaluation, a linear probe on every projector layer too
    online_linear: bool = False  # online linear probe on detached features (needs revealed labels)
    # online linear probes on every projector layer's output too (needs revealed labels and a projector)
    online_projector_probes: bool = False
    wait_timeout_s: float = 3600.0  # under torch.distributed: the longest a rank waits for rank 0's probes


@dataclass
class LoggingConfig:
    """Metric sinks besides metrics.jsonl (always written); each enabled explicitly."""

    tensorboard: bool = False  # RUN/tensorboard (needs the tensorboard extra)
    wandb: bool = False  # Weights & Biases (needs the wandb extra); a resumed run continues the same W&B run
    wandb_project: str = "auxssl"
    wandb_entity: str | None = None


@dataclass
class FNInjectionConfig:
    classes_per_batch: int | None = None  # draw every batch from this many classes (raises the false-negative rate)


@dataclass
class NoiseConfig:
    """Controlled label noise of the SSL objective (auxssl.noise); every knob off by default."""

    fn_elimination: float = 0.0  # the strength p of false-negative elimination, read as fn_elimination_mode says
    # "images": reveal the labels of a class-stratified fraction p of the images and drop the same-class negatives
    # among them (about p² of the false negatives); "pairs": drop each false-negative pair with probability p
    fn_elimination_mode: str = "images"
    fn_injection: FNInjectionConfig = field(default_factory=FNInjectionConfig)
    fp_injection: float = 0.0  # probability that a positive pair's second view comes from another image
    good_crop_fraction: float = 0.0  # probability that a positive pair is forced to be good (crop IoU ≥ good_crop_iou)
    good_crop_iou: float = 0.5  # the good-pair criterion: IoU of the two crop boxes (as PASCAL VOC matches boxes)
    measure: bool = True  # log noise/fn_rate_raw, noise/fn_rate, noise/fp_rate from the true labels (never the loss)

    @property
    def active(self) -> bool:
        """Whether any knob changes the training data or the loss."""
        return bool(self.fn_elimination or self.fn_injection.classes_per_batch or self.fp_injection
                    or self.good_crop_fraction)


@dataclass
class RunConfig:
    name: str = "run"
    output_dir: str = "runs"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    tasks: list[TaskConfig] = field(default_factory=list)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    noise: NoiseConfig = field(default_factory=NoiseConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir) / self.name


def _unknown_key(key: str, valid: list[str], where: str) -> ConfigError:
    close = difflib.get_close_matches(key, valid, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return ConfigError(f"unknown config key {where + key!r}{hint} (valid keys: {', '.join(valid)})")


def _coerce(value: Any, annotation: Any, where: str) -> Any:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if dataclasses.is_dataclass(annotation):
        return from_dict(annotation, value, where)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except ConfigError:
                continue
        raise ConfigError(f"{where.rstrip('.')}: {value!r} is not a {annotation}")
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{where.rstrip('.')}: expected a list, got {value!r}")
        return [_coerce(v, args[0], f"{where}[{i}].") for i, v in enumerate(value)]
    if origin is tuple:
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise ConfigError(f"{where.rstrip('.')}: expected {len(args)} values, got {value!r}")
        return tuple(_coerce(v, a, where) for v, a in zip(value, args))
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where.rstrip('.')}: expected a mapping, got {value!r}")
        return dict(value)
    if annotation is Any:
        return value
    if annotation is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if annotation is float and isinstance(value, str):  # PyYAML reads 1e-5 (no dot) as a string
        try:
            return float(value)
        except ValueError:
            pass
    a_bool_for_an_int = annotation is int and isinstance(value, bool)
    if annotation in (int, str, bool) and isinstance(value, annotation) and not a_bool_for_an_int:
        return value
    raise ConfigError(f"{where.rstrip('.')}: expected {getattr(annotation, '__name__', annotation)}, got {value!r}")


def from_dict(cls: type, data: dict[str, Any] | None, where: str = "") -> Any:
    """Build dataclass ``cls`` from a mapping, rejecting unknown keys and wrongly typed values."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where.rstrip('.') or 'config'}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        if key not in fields:
            raise _unknown_key(key, fields, where)
        kwargs[key] = _coerce(value, hints[key], f"{where}{key}.")
    return cls(**kwargs)


def to_dict(config: Any) -> dict[str, Any]:
    def convert(value: Any) -> Any:
        if isinstance(value, tuple):
            return list(value)
        if isinstance(value, list):
            return [convert(v) for v in value]
        if isinstance(value, dict):
            return {k: convert(v) for k, v in value.items()}
        return value

    return convert(dataclasses.asdict(config))


def _parse_value(raw: str, item: str) -> Any:
    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError as err:
        raise ConfigError(f"override {item!r}: the value is not valid YAML ({str(err).splitlines()[0]})") from None


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``a.b.c=value`` overrides (values parsed as YAML) to a nested mapping; a number indexes a list, e.g.
    ``tasks.0.weight=0.2``."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key.subkey=value")
        dotted, raw = item.split("=", 1)
        node: Any = data
        parts = dotted.split(".")
        for depth, part in enumerate(parts):
            last = depth == len(parts) - 1
            where = ".".join(parts[: depth + 1])
            if isinstance(node, list):
                if not part.isdigit() or int(part) >= len(node):
                    raise ConfigError(f"override {item!r}: {where} is not an index of a list of {len(node)} items")
                if last:
                    node[int(part)] = _parse_value(raw, item)
                else:
                    node = node[int(part)]
            elif isinstance(node, dict):
                if last:
                    node[part] = _parse_value(raw, item)
                else:
                    node = node.setdefault(part, {})
            else:
                raise ConfigError(f"override {item!r}: {'.'.join(parts[:depth])} is a value, not a section")
    return data


def shipped_configs() -> dict[str, Path]:
    """The config files that ship with the package (``auxssl/configs/*.yaml``: one per method on CIFAR-10, and
    ``own_folder``), by name."""
    folder = Path(__file__).parent / "configs"
    return {p.stem: p for p in sorted(folder.glob("*.yaml"))}


#: ``<method>[_rotation]_<dataset>``: a shipped method config with rotation (λ = 0.1) and/or another dataset.
VARIANT = re.compile(r"^(?P<method>.+?)(?P<rotation>_rotation)?_(?P<dataset>cifar10|cifar100)$")


def shipped_config(name: str) -> tuple[Path, list[str]] | None:
    """A shipped config by name — a file, or a variant of one (``byol_rotation_cifar100`` is ``byol_cifar10.yaml``
    with ``tasks=[{name: rotation, weight: 0.1}]`` and ``data.dataset=cifar100``) — and the overrides that make the
    variant; None for an unknown name."""
    files = shipped_configs()
    if name in files:
        return files[name], []
    match = VARIANT.match(name)
    if match is None or f"{match['method']}_cifar10" not in files:
        return None
    overrides = [f"name={name}"]
    if match["rotation"]:
        overrides.append("tasks=[{name: rotation, weight: 0.1}]")
    if match["dataset"] != "cifar10":
        overrides.append(f"data.dataset={match['dataset']}")
    return files[f"{match['method']}_cifar10"], overrides


def shipped_names() -> list[str]:
    """Every name `shipped_config` accepts: the files and, for each method, its rotation and CIFAR-100 variants."""
    names = []
    for name in shipped_configs():
        names.append(name)
        if name.endswith("_cifar10"):
            method = name.removesuffix("_cifar10")
            names += [f"{method}_rotation_cifar10", f"{method}_cifar100", f"{method}_rotation_cifar100"]
    return names


def resolve_config_path(name_or_path: str | Path) -> tuple[Path, list[str]]:
    """A config file and the overrides it needs: an existing path (none), else a shipped config's name or variant
    (``byol_rotation_cifar10``)."""
    path = Path(name_or_path)
    if path.is_file():
        return path, []
    shipped = shipped_config(str(name_or_path))
    if shipped is not None:
        return shipped
    close = difflib.get_close_matches(str(name_or_path), shipped_names(), n=1)
    hint = f"; did you mean {close[0]!r}?" if close else " (auxssl configs lists the shipped ones)"
    raise ConfigError(f"config {str(name_or_path)!r} does not exist: neither a file nor a shipped config{hint}")


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    """Read a YAML config (or the defaults), apply overrides, validate everything."""
    data: dict[str, Any] = {}
    variant: list[str] = []
    if path is not None:
        path, variant = resolve_config_path(path)
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.MarkedYAMLError as err:
            mark = err.problem_mark
            line = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
            raise ConfigError(f"{line}: YAML syntax error: {err.problem or err}") from None
        except yaml.YAMLError as err:
            raise ConfigError(f"{path}: YAML syntax error: {err}") from None
    data = apply_overrides(data, [*variant, *(overrides or [])])
    config = from_dict(RunConfig, data)
    validate(config)
    return config


def validate(config: RunConfig) -> None:
    from auxssl.data import BACKENDS, DATASETS, RECIPES
    from auxssl.engine.optim import OPTIMIZERS
    from auxssl.engine.precision import FEATURE_PRECISIONS, PRECISIONS
    from auxssl.plugins import method_class, task_class
    from baselines import BACKBONES
    from baselines.backbones import TIMM_PREFIX

    choices = {
        "data.dataset": (config.data.dataset, DATASETS),
        "eval.dataset": (config.eval.dataset or config.data.dataset, DATASETS),
        "data.backend": (config.data.backend, (*BACKENDS, "auto")),
        "data.recipe": (config.data.recipe, tuple(RECIPES)),
        "optim.name": (config.optim.name, OPTIMIZERS),
        "train.precision": (config.train.precision, PRECISIONS),
        "eval.bank": (config.eval.bank, ("train", "full_train")),
        "eval.precision": (config.eval.precision, FEATURE_PRECISIONS),
        "noise.fn_elimination_mode": (config.noise.fn_elimination_mode, ("images", "pairs")),
    }
    if not config.model.backbone.startswith(TIMM_PREFIX):
        choices["model.backbone"] = (config.model.backbone, BACKBONES + (TIMM_PREFIX + "<timm model>",))
    try:  # registered names or import paths (module:Class), resolved now rather than when training starts
        method_class(config.model.method)
        for i, task in enumerate(config.tasks):
            if getattr(task_class(task.name, f"tasks[{i}].name"), "uses_features", False) and \
                    config.model.method == "none":
                raise ConfigError(f"tasks[{i}].name={task.name} predicts from the features the base method computes "
                                  "from the views, and model.method=none computes none; name a base method")
    except InputError as err:
        raise ConfigError(str(err)) from None
    for key, (value, valid) in choices.items():
        if value not in valid:
            close = difflib.get_close_matches(str(value), list(valid), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"{key}={value!r} is not one of {', '.join(valid)}{hint}")
    data, optim, train, evaluation = config.data, config.optim, config.train, config.eval
    minimum = {"train.epochs": (train.epochs, 1), "data.batch_size": (data.batch_size, 2),
               "data.image_size": (data.image_size, 1), "data.num_workers": (data.num_workers, 0),
               "train.log_every_steps": (train.log_every_steps, 1),
               "train.checkpoint_every_steps": (train.checkpoint_every_steps, 0),
               "train.checkpoint_every_epochs": (train.checkpoint_every_epochs, 0),
               "eval.every_epochs": (evaluation.every_epochs, 0), "eval.knn_k": (evaluation.knn_k, 1),
               "optim.weight_decay": (optim.weight_decay, 0), "optim.warmup_epochs": (optim.warmup_epochs, 0),
               **{f"tasks[{i}].weight": (task.weight, 0) for i, task in enumerate(config.tasks)}}
    for key, value in (("data.train_subset", data.train_subset), ("eval.test_subset", evaluation.test_subset),
                       ("eval.image_size", evaluation.image_size)):
        if value is not None:
            minimum[key] = (value, 1)
    never = {"train.checkpoint_every_steps", "train.checkpoint_every_epochs", "eval.every_epochs"}
    for key, (value, least) in minimum.items():
        if value < least:
            raise ConfigError(f"{key}={value} must be at least {least}" + (" (0 means never)" if key in never else ""))
    positive = {"optim.lr": optim.lr, "eval.knn_temperature": evaluation.knn_temperature,
                "eval.wait_timeout_s": evaluation.wait_timeout_s}
    if data.memory_budget_gb is not None:
        positive["data.memory_budget_gb"] = data.memory_budget_gb
    for key, value in positive.items():
        if not value > 0:
            raise ConfigError(f"{key}={value} must be positive")
    for key, value, upper in (("data.reveal_labels", data.reveal_labels, "1]"),
                              ("optim.min_lr_ratio", optim.min_lr_ratio, "1]"),
                              ("optim.momentum", optim.momentum, "1)")):
        if not (0 <= value <= 1 and (upper == "1]" or value < 1)):
            raise ConfigError(f"{key}={value} must lie in [0, {upper}")
    for key in ("online_linear", "online_projector_probes"):
        if getattr(evaluation, key) and config.model.method == "none":
            raise ConfigError(f"eval.{key} probes the features the base method computes from the views, and "
                              "model.method=none computes none (it trains on its tasks alone); use the kNN or "
                              "eval.linear")
    roots = {"data": (data.dataset, data.root), "eval": (evaluation.dataset, evaluation.root)}
    for key, (dataset, root) in roots.items():
        if dataset == "folder" and not root:
            raise ConfigError(f"{key}.dataset=folder needs {key}.root: the folder of images (--set {key}.root=PATH)")
    validate_views(config)
    validate_noise(config)


def validate_views(config: RunConfig) -> None:
    """The method must accept the number of views the recipe makes (e.g. BYOL takes exactly two)."""
    from auxssl.data import get_recipe
    from auxssl.plugins import method_class

    wanted = getattr(method_class(config.model.method), "num_views", None)
    made = len(get_recipe(config.data.recipe, config.data.image_size).views)
    if wanted is not None and wanted != made:
        raise ConfigError(f"model.method={config.model.method!r} takes {wanted} views per image but "
                          f"data.recipe={config.data.recipe!r} makes {made}; choose a {wanted}-view recipe")


def validate_noise(config: RunConfig) -> None:
    noise = config.noise
    for key in ("fn_elimination", "fp_injection", "good_crop_fraction", "good_crop_iou"):
        value = getattr(noise, key)
        if not 0.0 <= value <= 1.0:
            raise ConfigError(f"noise.{key}={value} must lie in [0, 1]")
    classes = noise.fn_injection.classes_per_batch
    if classes is not None and (classes < 1 or config.data.batch_size % classes):
        raise ConfigError(f"noise.fn_injection.classes_per_batch={classes} must be positive and divide "
                          f"data.batch_size={config.data.batch_size}")
    if noise.fn_elimination > 0:
        from auxssl.plugins import method_class
        from baselines import METHODS

        if not hasattr(method_class(config.model.method), "contrast_sets"):
            with_negatives = sorted(name for name, cls in METHODS.items() if hasattr(cls, "contrast_sets"))
            raise ConfigError(f"noise.fn_elimination needs a loss with negatives; model.method={config.model.method!r} "
                              f"has none (methods with negatives: {', '.join(with_negatives)})")


def save_config(config: RunConfig, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(config), sort_keys=False))
