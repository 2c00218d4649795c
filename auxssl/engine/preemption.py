"""Pre-emption: on SIGTERM (and SIGUSR1, which SLURM can send before a time limit) the trainer checkpoints at the next
step boundary and exits with `EXIT_PREEMPTED`, so that a requeued job continues with ``--resume``."""

from __future__ import annotations

import signal
import threading
from types import FrameType, TracebackType
from typing import Self

import torch

from auxssl.errors import UserError

#: Exit status of a pre-empted run (sysexits' EX_TEMPFAIL: a temporary failure, retry).
EXIT_PREEMPTED = 75
SIGNALS = tuple(s for s in (getattr(signal, "SIGTERM", None), getattr(signal, "SIGUSR1", None)) if s is not None)


class Preempted(UserError):
    """Training stopped at a step boundary on a signal; the state was checkpointed."""

    exit_code = EXIT_PREEMPTED


class PreemptionGuard:
    """While active, turns `SIGNALS` into a request that `requested` reports (agreed by every process under
    torch.distributed, so that all stop at the same step). Previous handlers are restored on exit."""

    def __init__(self, distributed: bool = False, device: torch.device | str = "cpu") -> None:
        self.distributed, self.device = distributed, torch.device(device)
        self.signal_name: str | None = None
        self._previous: dict[int, object] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.signal_name = signal.Signals(signum).name

    def __enter__(self) -> Self:
        if threading.current_thread() is threading.main_thread():  # handlers can only be set there
            for sig in SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]
        self._previous.clear()

    def requested(self) -> bool:
        """Whether any process received a pre-emption signal (a collective call under torch.distributed)."""
        flag = self.signal_name is not None
        if self.distributed:
            import torch.distributed as dist

            value = torch.tensor([float(flag)], device=self.device)  # NCCL reduces device tensors only
            dist.all_reduce(value)
            flag = bool(value.item() > 0)
            if flag and self.signal_name is None:
                self.signal_name = "a signal to another process"
        return flag
