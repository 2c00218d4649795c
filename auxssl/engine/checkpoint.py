"""Full-state checkpoints, written atomically (temporary file, fsync, rename): a crash never leaves a partial file.

Every piece of state is stored as tensors, numbers, strings, lists and dicts, so checkpoints load with
``torch.load(weights_only=True)``, which never runs code from the file; a checkpoint holding any other pickled
object is refused (`UnsafeCheckpointError`).
"""

from __future__ import annotations

import os
import pickle
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from auxssl.errors import InputError

CHECKPOINT_DIR = "checkpoints"
_NAME = re.compile(r"step-(\d+)\.pt$")


class UnsafeCheckpointError(InputError):
    """A checkpoint that cannot be loaded without running code from it (or is not a checkpoint at all)."""


def rng_state(device: torch.device | None = None) -> dict[str, Any]:
    """Every generator's state as tensors and numbers (readable with ``weights_only=True``): CPU, NumPy, Python,
    and the CUDA generator of the training ``device`` only (under torchrun every process sees every GPU of its
    node; saving them all made a resume on fewer visible GPUs fail)."""
    kind, keys, pos, has_gauss, cached_gaussian = np.random.get_state()
    version, mt_state, gauss_next = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached_gaussian)},
        "python": {"version": version, "state": torch.tensor(mt_state, dtype=torch.int64), "gauss_next": gauss_next},
    }
    if device is not None and device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, Any], device: torch.device | None = None) -> None:
    """Restore `rng_state`; the CUDA state goes to the training ``device`` (a checkpoint written before only the
    device's state was saved holds one state per visible GPU: the device's own is taken, else the first)."""
    torch.set_rng_state(state["torch"])
    numpy = state["numpy"]
    np.random.set_state((numpy["kind"], numpy["keys"].numpy().astype(np.uint32), numpy["pos"], numpy["has_gauss"],
                         numpy["cached_gaussian"]))
    python = state["python"]
    random.setstate((python["version"], tuple(int(v) for v in python["state"].tolist()), python["gauss_next"]))
    cuda = state.get("cuda")
    if cuda is not None and device is not None and device.type == "cuda":
        if isinstance(cuda, (list, tuple)):  # every visible GPU's state (older checkpoints)
            index = device.index if device.index is not None else torch.cuda.current_device()
            cuda = cuda[index] if index < len(cuda) else cuda[0]
        torch.cuda.set_rng_state(cuda, device)


def process_state(model: torch.nn.Module, device: torch.device | None = None) -> dict[str, Any]:
    """What one process of a multi-process run holds for itself: its random streams (each rank draws its own
    crops and rotation labels) and the model's buffers (SwAV keeps a queue of *local* embeddings per rank; DDP
    does not broadcast buffers). Parameters and optimiser state are identical on every rank and saved once."""
    return {"rng": rng_state(device),
            "buffers": {name: buffer.detach().cpu().clone() for name, buffer in model.named_buffers()}}


def restore_process_state(state: dict[str, Any], model: torch.nn.Module, device: torch.device | None = None) -> None:
    """Restore `process_state` into this process (the buffers in place, keeping their device and dtype)."""
    buffers = dict(model.named_buffers())
    missing = set(buffers) ^ set(state["buffers"])
    if missing:
        raise InputError(f"the checkpoint's per-process buffers do not match the model's: {sorted(missing)[:5]}")
    with torch.no_grad():
        for name, value in state["buffers"].items():
            buffers[name].copy_(value)
    set_rng_state(state["rng"], device)


def atomic_save(obj: Any, path: Path) -> None:
    """Write ``obj`` to ``path`` through a temporary file that is removed on every exit path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with tmp.open("wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def remove_partial_writes(run_dir: str | Path) -> list[Path]:
    """Delete temporary files left by a checkpoint write that was killed (``kill -9``); returns them."""
    leftovers = list((Path(run_dir) / CHECKPOINT_DIR).glob(".*.tmp"))
    for path in leftovers:
        path.unlink(missing_ok=True)
    return leftovers


def checkpoint_path(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / CHECKPOINT_DIR / f"step-{step:08d}.pt"


def find_last_checkpoint(run_dir: str | Path) -> Path | None:
    """The checkpoint of the latest step in ``run_dir`` (None when there is none)."""
    folder = Path(run_dir) / CHECKPOINT_DIR
    candidates = [(int(m.group(1)), p) for p in folder.glob("step-*.pt") if (m := _NAME.search(p.name))]
    return max(candidates)[1] if candidates else None


def resolve_checkpoint(path: str | Path) -> Path:
    """``path`` itself, or a run directory's last checkpoint (`FileNotFoundError` when it holds none)."""
    path = Path(path)
    if not path.is_dir():
        return path
    checkpoint = find_last_checkpoint(path)
    if checkpoint is None:
        raise FileNotFoundError(f"{path} holds no checkpoint")
    return checkpoint


def prune_checkpoints(run_dir: str | Path, keep: int = 2) -> None:
    """Keep the ``keep`` most recent checkpoints."""
    folder = Path(run_dir) / CHECKPOINT_DIR
    candidates = sorted((int(m.group(1)), p) for p in folder.glob("step-*.pt") if (m := _NAME.search(p.name)))
    for _, path in candidates[:-keep]:
        path.unlink(missing_ok=True)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """A checkpoint's state, loaded with ``weights_only=True``: tensors, numbers, strings, lists and dicts only."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise UnsafeCheckpointError(
            f"refusing to load {path}: it holds pickled objects other than tensors, numbers, strings, lists and "
            f"dicts, which could run code when loaded (auxssl never writes such checkpoints). Detail: "
            f"{str(err).splitlines()[0]}"
        ) from err
    except (RuntimeError, EOFError) as err:
        raise UnsafeCheckpointError(
            f"{path} is not a readable checkpoint (truncated or another format): {err}") from err
