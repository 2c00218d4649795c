"""Optional metric sinks besides ``metrics.jsonl``: TensorBoard and Weights & Biases, each enabled explicitly
(``logging.tensorboard``, ``logging.wandb``). A resumed run continues the same W&B run (its id is kept in the run
directory)."""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any, Protocol

from auxssl.errors import InputError

WANDB_ID_FILE = "wandb_id.txt"


class MetricSink(Protocol):
    def log(self, kind: str, metrics: dict[str, float], step: int) -> None: ...

    def close(self) -> None: ...


class TensorBoardSink:
    def __init__(self, run_dir: Path) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as err:
            raise InputError(
                'logging.tensorboard needs the tensorboard package: pip install -e ".[tensorboard]"') from err
        self.writer = SummaryWriter(str(run_dir / "tensorboard"))

    def log(self, kind: str, metrics: dict[str, float], step: int) -> None:
        for name, value in metrics.items():
            self.writer.add_scalar(f"{kind}/{name}", value, step)

    def close(self) -> None:
        self.writer.close()


class WandbSink:
    """One W&B run per auxssl run; the id is stored in ``run_dir/wandb_id.txt`` and reused on resume."""

    def __init__(self, run_dir: Path, project: str, entity: str | None, name: str, config: dict[str, Any]) -> None:
        try:
            import wandb
        except ImportError as err:
            raise InputError('logging.wandb needs the wandb package: pip install -e ".[wandb]"') from err
        id_file = run_dir / WANDB_ID_FILE
        run_id = id_file.read_text().strip() if id_file.exists() else secrets.token_hex(6)
        run_dir.mkdir(parents=True, exist_ok=True)
        id_file.write_text(run_id)
        self.run = wandb.init(project=project, entity=entity, name=name, id=run_id, resume="allow", config=config,
                              dir=str(run_dir))

    def log(self, kind: str, metrics: dict[str, float], step: int) -> None:
        self.run.log({f"{kind}/{name}": value for name, value in metrics.items()}, step=step)

    def close(self) -> None:
        self.run.finish()


def build_sinks(settings: Any, run_dir: Path, name: str, config: dict[str, Any]) -> list[MetricSink]:
    """The sinks a `LoggingConfig` enables."""
    sinks: list[MetricSink] = []
    if settings.tensorboard:
        sinks.append(TensorBoardSink(run_dir))
    if settings.wandb:
        sinks.append(WandbSink(run_dir, settings.wandb_project, settings.wandb_entity, name, config))
    return sinks


def progress_bar(enabled: bool, total: int, initial: int, name: str) -> Any:
    """A tqdm bar over the run's steps (from ``initial``), or None when disabled or tqdm is missing."""
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return tqdm(total=total, initial=initial, desc=name, unit="step", dynamic_ncols=True)
