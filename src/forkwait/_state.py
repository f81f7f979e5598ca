"""The states of a future, in order: a future is done once its state reaches DONE."""

from __future__ import annotations

QUEUED = 0  # accepted, not started: a sync call in the pool queue, or a task to be created
RUNNING = 1
DONE = 2
FAILED = 3
CANCELLED = 4
