"""Stopping a run cleanly on SIGTERM (what batch schedulers send) or SIGINT (Ctrl-C).

The first signal asks the trainer to stop after the current optimizer step; the trainer then
writes a mid-epoch checkpoint (with the loader position, so a resumed run stays bit-identical),
logs it, and raises :class:`TrainingInterrupted`, which the CLI turns into the conventional exit
status (143 for SIGTERM, 130 for SIGINT). A second signal stops at once (KeyboardInterrupt).
"""
from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path

__all__ = ["TrainingInterrupted", "StopRequest"]

logger = logging.getLogger(__name__)


class TrainingInterrupted(Exception):
    """Training stopped on a signal after saving a checkpoint to resume from.

    Attributes:
        signum: the signal number; exit_code: ``128 + signum`` (143 SIGTERM, 130 SIGINT);
        checkpoint: the sidecar of the checkpoint written (None when saving was impossible).
    """

    def __init__(self, signum: int, checkpoint: Path | None, out_dir: Path) -> None:
        self.signum, self.checkpoint, self.out_dir = signum, checkpoint, out_dir
        self.exit_code = 128 + signum
        name = signal.Signals(signum).name
        where = (f"saved checkpoint {checkpoint.name}; continue the run with resume=True"
                 if checkpoint is not None else "no checkpoint could be saved")
        super().__init__(f"training stopped by {name}: {where} (run folder {out_dir})")


class StopRequest:
    """Records the first SIGTERM/SIGINT between :meth:`install` and :meth:`uninstall` (main
    thread only; elsewhere nothing is installed and :attr:`signum` stays None)."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict = {}

    def _handle(self, signum: int, _frame) -> None:
        if self.signum is not None:  # the second one: stop now
            raise KeyboardInterrupt
        self.signum = signum
        logger.warning("%s received: finishing the current step, then saving a checkpoint "
                       "(send it again to stop at once)", signal.Signals(signum).name)

    def install(self) -> StopRequest:
        """Catch SIGTERM and SIGINT from now on (main thread only), until :meth:`uninstall`."""
        if threading.current_thread() is threading.main_thread() and not self._previous:
            self._previous = {s: signal.signal(s, self._handle) for s in (signal.SIGTERM, signal.SIGINT)}
        return self

    def uninstall(self) -> None:
        """Give the signals back to the handlers they had; safe to call twice."""
        previous, self._previous = self._previous, {}
        for s, handler in previous.items():
            signal.signal(s, handler)
