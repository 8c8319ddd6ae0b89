"""Executors that run every job in the driver process, one at a time (no scheduling needed on
one machine: timing must not share it with anything anyway)."""
from __future__ import annotations

import traceback

from harness.engine.executors.base import KINDS, Done, Executor, Task
from harness.errors import UserError, first_line


class LocalExecutor(Executor):
    """Jobs run in the driver, in order of preference (measure jobs first, so rows stream out
    as soon as their network exists), each measure cell in its own process with a time-out."""

    name = "local"
    isolated = True

    def __init__(self, address: str | None = None):
        if address:
            raise UserError(f"executor {self.name} takes no address, got {address!r}")
        super().__init__(None)
        self._queue: list[Task] = []

    def submit(self, task: Task) -> None:
        self._queue.append(task)

    def pending(self) -> int:
        return len(self._queue)

    def next_done(self) -> Done:
        task = min(self._queue, key=lambda t: KINDS.index(t.kind))  # first of the preferred kind
        self._queue.remove(task)
        try:
            return Done(task, task.fn(*task.args))
        except (KeyboardInterrupt, UserError):
            raise
        except Exception as exc:  # a bug in a job: its rows say so, the sweep goes on
            return Done(task, error=f"{type(exc).__name__}: {first_line(exc)} "
                                    f"[{traceback.format_exc(limit=-1).strip().splitlines()[-2].strip()}]")


class InlineExecutor(LocalExecutor):
    """As ``local``, but cells run in the driver process too: no child processes, no time-outs
    (a crash or a hang in a runtime takes the sweep with it). For debugging and fast tests."""

    name = "inline"
    isolated = False
