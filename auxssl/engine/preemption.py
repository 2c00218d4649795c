"""Pre-emption: on SIGTERM (and SIGUSR1, which SLURM can send before a time limit) the trainer checkpoints at the next
step boundary and exits with `EXIT_PREEMPTED`, so that a requeued job continues with ``--resume``. Ctrl-C (SIGINT)
does the same and exits with `EXIT_INTERRUPTED`; a second Ctrl-C stops at once (what was checkpointed is kept)."""

from __future__ import annotations

import signal
import sys
import threading
from types import FrameType, TracebackType
from typing import TYPE_CHECKING, Self

from auxssl.errors import UserError

if TYPE_CHECKING:  # torch is imported where it is used, so that the command line starts without it
    import torch

#: Exit status of a pre-empted run (sysexits' EX_TEMPFAIL: a temporary failure, retry).
EXIT_PREEMPTED = 75
#: Exit status of a run stopped by Ctrl-C (the shell's 128 + SIGINT).
EXIT_INTERRUPTED = 130
SIGNALS = tuple(s for s in (getattr(signal, "SIGTERM", None), getattr(signal, "SIGUSR1", None), signal.SIGINT)
                if s is not None)


class Preempted(UserError):
    """Training stopped at a step boundary on a signal; the state was checkpointed."""

    def __init__(self, message: str, signal_name: str | None = None) -> None:
        super().__init__(message)
        self.exit_code = EXIT_INTERRUPTED if signal_name == "SIGINT" else EXIT_PREEMPTED


class PreemptionGuard:
    """While active, turns `SIGNALS` into a request that `requested` reports (agreed by every process under
    torch.distributed, so that all stop at the same step). Previous handlers are restored on exit."""

    def __init__(self, distributed: bool = False, device: torch.device | str = "cpu") -> None:
        self.distributed, self.device = distributed, str(device)
        self.signal_name: str | None = None
        self._previous: dict[int, object] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.signal_name = signal.Signals(signum).name
        if signum == signal.SIGINT:  # the next Ctrl-C interrupts at once
            signal.signal(signal.SIGINT, signal.default_int_handler)
            print("\nauxssl: Ctrl-C: checkpointing at the end of this step (Ctrl-C again to stop at once)",
                  file=sys.stderr, flush=True)

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
            import torch
            import torch.distributed as dist

            value = torch.tensor([float(flag)], device=self.device)  # NCCL reduces device tensors only
            dist.all_reduce(value)
            flag = bool(value.item() > 0)
            if flag and self.signal_name is None:
                self.signal_name = "a signal to another process"
        return flag
