"""forkwait in plain sync code: fan blocking calls out with fork, collect them with wait.

There is no ``async`` here: ``fork`` runs each call in a worker thread and ``wait`` /
``wait_all`` block until the values are there. The script "downloads" four files (each
download blocks for 0.2 s, as a real one waits on the network) and hashes them with
hashlib (which releases the GIL while it hashes a large buffer), first one after another,
then forked. Then it shows a ``wait`` that times out, and an error that reaches the
caller with its own type.

    python examples/sync_script.py
"""

from __future__ import annotations

import hashlib
import tempfile
import time
import traceback
from pathlib import Path

from forkwait import fork, wait, wait_all

DELAY = 0.2  # seconds each download blocks
SIZE = 2 * 1024 * 1024  # bytes per file
NAMES = ["a.bin", "b.bin", "c.bin", "d.bin"]


def content(name: str) -> bytes:
    """The bytes the server would send for ``name`` (the same on every run)."""
    return hashlib.sha256(name.encode()).digest() * (SIZE // 32)


def download(name: str, folder: Path) -> Path:
    """Stands for a blocking HTTP download: waits DELAY seconds, then writes the file."""
    time.sleep(DELAY)
    path = folder / name
    path.write_bytes(content(name))
    return path


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def one_after_another(folder: Path) -> list[str]:
    return [sha256(download(name, folder)) for name in NAMES]


def forked(folder: Path) -> list[str]:
    """The same work, forked: all downloads at once, then all hashes at once."""
    paths = wait_all([fork(download, name, folder) for name in NAMES])
    return wait_all([fork(sha256, path) for path in paths])


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)

        start = time.perf_counter()
        expected = one_after_another(folder)
        sequential = time.perf_counter() - start
        start = time.perf_counter()
        digests = forked(folder)
        parallel = time.perf_counter() - start

        print(f"{len(NAMES)} downloads of {DELAY} s each, then SHA-256 of each file:")
        for name, digest in zip(NAMES, digests, strict=True):
            print(f"  {name}: {digest[:16]}")
        print(f"same digests both ways: {digests == expected}")
        print(f"one after another: {sequential:.2f} s")
        print(f"forked:            {parallel:.2f} s ({sequential / parallel:.1f}x faster)")

        # A timeout gives up waiting, not the call: it goes on, and can be waited for again.
        slow = fork(download, "late.bin", folder)
        try:
            wait(slow, timeout=DELAY / 4)
        except TimeoutError:
            print(f"timeout: no value after {DELAY / 4} s, TimeoutError raised")
        print(f"timeout: the call went on and wrote {wait(slow).name}")

        # The call's own exception comes out of wait: same type, same object, and its
        # traceback still shows where it was raised, inside the worker thread.
        missing = fork(sha256, folder / "missing.bin")
        try:
            wait(missing)
        except FileNotFoundError as exc:
            where = [frame.name for frame in traceback.extract_tb(exc.__traceback__)]
            print(f"error: FileNotFoundError for {Path(str(exc.filename)).name}")
            print(f"error: raised in sha256(): {'sha256' in where}")


if __name__ == "__main__":
    main()
