"""The states of a future and the one lock that guards registering for its end."""

from __future__ import annotations

import os
import threading

# One lock for every future's waiters: held for a few attribute writes, never around
# user code, and one shared lock costs no allocation per future. Reentrant because a
# garbage collection can run a finalizer that touches a future while the lock is held;
# an RLock costs the same as a Lock here.
state_lock = threading.RLock()

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
