"""The project's console lines from Ray workers, printed by the driver.

Ray's own worker output stays in its log files (:mod:`sigma_ray.infra.ray_session`), so rank 0's progress lines travel
another way: ``line(console, text)`` puts them into a small :class:`ConsoleActor`, and the driver's
:class:`ConsoleRelay` thread prints them to its stdout (under ``ray job submit`` that is the job's log) as they
arrive and once more when the run ends, so none is lost.
"""
from __future__ import annotations

import sys
import threading

import ray

from sigma_ray.infra.driver_node import on_driver_node


@ray.remote(num_cpus=0)
class ConsoleActor:
    """A queue of console lines."""

    def __init__(self):
        self.lines: list[str] = []

    def put(self, text: str) -> None:
        self.lines.append(text)

    def drain(self) -> list[str]:
        out, self.lines = self.lines, []
        return out


def line(console, text: str) -> None:
    """Send ``text`` to the driver's console (``console`` None: print it here)."""
    if console is None:
        print(text, file=sys.__stdout__, flush=True)
    else:
        console.put.remote(text)


class ConsoleRelay:
    """``with ConsoleRelay() as relay:`` pass ``relay.actor`` to the workers; their lines print here."""

    def __init__(self, every_s: float = 0.5):
        self.actor = ConsoleActor.options(**on_driver_node()).remote()
        self.every_s = every_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="sigma-ray-console")

    def _print(self) -> None:
        for text in ray.get(self.actor.drain.remote()):
            print(text, flush=True)

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            try:
                self._print()
            except ray.exceptions.RayError:
                return

    def __enter__(self) -> "ConsoleRelay":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        try:
            self._print()
        finally:
            ray.kill(self.actor)
