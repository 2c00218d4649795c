"""Full-state checkpoints, written atomically (temporary file, fsync, rename): a crash never leaves a partial file."""

from __future__ import annotations

import os
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

CHECKPOINT_DIR = "checkpoints"
_NAME = re.compile(r"step-(\d+)\.pt$")


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def atomic_save(obj: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def checkpoint_path(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / CHECKPOINT_DIR / f"step-{step:08d}.pt"


def find_last_checkpoint(run_dir: str | Path) -> Path | None:
    """The checkpoint of the latest step in ``run_dir`` (None when there is none)."""
    folder = Path(run_dir) / CHECKPOINT_DIR
    candidates = [(int(m.group(1)), p) for p in folder.glob("step-*.pt") if (m := _NAME.search(p.name))]
    return max(candidates)[1] if candidates else None


def prune_checkpoints(run_dir: str | Path, keep: int = 2) -> None:
    """Keep the ``keep`` most recent checkpoints."""
    folder = Path(run_dir) / CHECKPOINT_DIR
    candidates = sorted((int(m.group(1)), p) for p in folder.glob("step-*.pt") if (m := _NAME.search(p.name)))
    for _, path in candidates[:-keep]:
        path.unlink(missing_ok=True)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    return torch.load(path, map_location="cpu", weights_only=False)
