"""forkwait's benchmark suite: forkwait next to its anchors, interleaved in one process.

Run ``python -m bench`` (``--quick`` for a smoke run, ``--only SUBSTRING`` to filter).
Each row times an anchor (asyncio, ``concurrent.futures``, a hand-written pool, ...)
and forkwait round by round in the same process, takes the median of each, and
compares forkwait's median with the best anchor's against the row's target ratio.
"""
