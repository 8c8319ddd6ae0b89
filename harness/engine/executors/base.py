"""The executor interface: the driver submits tasks and takes finished ones back, one at a time.

The driver alone writes the store, so an executor only runs tasks and hands back their results
(or why they failed). A task is a top-level function and picklable arguments, so it can run in
the driver, in a child process or on another machine.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Callable

KINDS = ("measure", "compress", "baseline")  # also the local order of preference: finish rows first


@dataclass
class Task:
    """One job to run: ``fn(*args)``, with what it needs of a machine.

    exclusive: a measure job holds the whole node it runs on (timing never shares a machine).
    resources: what else it needs (a GPU, a board behind a tracker), from the target.
    context: the driver's own bookkeeping for the job; never sent anywhere.
    """

    kind: str
    fn: Callable[..., Any]
    args: tuple
    label: str
    context: Any = None
    cpus: float = 1.0
    resources: dict[str, float] = field(default_factory=dict)
    exclusive: bool = False
    timeout_s: float | None = None


@dataclass
class Done:
    """A finished task: its result, or ``error`` when it raised or its worker died."""

    task: Task
    result: Any = None
    error: str | None = None


class Executor(ABC):
    """Runs tasks. ``isolated`` tells the measure jobs whether to run each cell in its own process."""

    name = ""
    isolated = True

    def __init__(self, address: str | None = None):
        self.address = address

    def start(self, threads: int) -> None:
        """Prepare to run (connect to a cluster, ...); ``threads`` is what one cell uses."""

    @abstractmethod
    def submit(self, task: Task) -> None:
        """Queue ``task``; it may start at once."""

    @abstractmethod
    def next_done(self) -> Done:
        """Block until a task has finished and return it (each task is returned once)."""

    @abstractmethod
    def pending(self) -> int:
        """Tasks submitted and not yet returned by ``next_done``."""

    def close(self) -> None:
        """Release what ``start`` took."""
