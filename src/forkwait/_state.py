"""The states of a future and the one lock that guards every transition."""

from __future__ import annotations

import os
import threading

# One lock for every future's state. Transitions are a few attribute writes, never user
# code, so holding it is short; one shared lock costs no allocation per future.
state_lock = threading.Lock()

# Held across os.fork() so that the child never inherits it locked by a thread that
# does not exist there.
os.register_at_fork(
    before=state_lock.acquire,
    after_in_parent=state_lock.release,
    after_in_child=state_lock.release,
)

# In order: a future is done once its state reaches DONE.
QUEUED = 0  # accepted, not started: a sync call in the pool queue, or a task to be created
RUNNING = 1
DONE = 2
FAILED = 3
CANCELLED = 4
