"""A worker's clock: the background thread that does what a scheduler process does elsewhere.

Every ``schedule_check`` seconds (with 10% jitter, so that many workers started together spread
out) it dispatches the parked jobs now due within the queue's own delay (``timers.py``) and
creates the periodic jobs' ticks now due (``schedules.py``). Any number of workers run one: both
steps are safe to run at once and to repeat (each job runs once), so there is nothing to run
exactly once. It runs beside the receive loop, so a worker whose handlers are all busy still
dispatches on time.
"""

from __future__ import annotations

import logging
import random
import threading
from typing import TYPE_CHECKING

from . import schedules, timers

if TYPE_CHECKING:
    from .context import Context

logger = logging.getLogger(__name__)


class Clock:
    """Dispatch parked jobs and serve schedules every ``check_s`` seconds until stopped."""

    def __init__(self, ctx: Context, check_s: float) -> None:
        self.ctx = ctx
        self.check_s = check_s
        self.ticks = schedules.TickServer(ctx, check_s)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start the thread (a check runs at once)."""
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="remotejob-clock", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread; a check under way finishes first."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def check(self) -> None:
        """One check: dispatch what is due, then serve the schedules; never raises."""
        try:
            timers.dispatch(self.ctx)
        except Exception as exc:  # noqa: BLE001 - the clock must outlive a bad check
            logger.warning("could not dispatch parked jobs: %s", exc)
        try:
            self.ticks.serve()
        except Exception as exc:  # noqa: BLE001
            logger.warning("could not serve the periodic jobs: %s", exc)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.check()
            self._stop.wait(self.check_s * random.uniform(0.9, 1.1))  # noqa: S311 - jitter
