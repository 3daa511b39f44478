"""Stage timings: `timer.stage(name)` is a context manager that logs and adds up seconds."""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager

log = logging.getLogger("cryoalign")


class Timer:
    def __init__(self):
        self.timings: dict[str, float] = {}
        self._t0 = time.perf_counter()

    @contextmanager
    def stage(self, name: str):
        t = time.perf_counter()
        log.debug("%s ...", name)
        yield
        dt = time.perf_counter() - t
        self.timings[name] = self.timings.get(name, 0.0) + dt
        log.info("%s done in %.2f s", name, dt)

    def total(self) -> float:
        return time.perf_counter() - self._t0
