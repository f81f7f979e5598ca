"""The examples run, in a fresh interpreter, and show what they claim."""

from __future__ import annotations

import asyncio
import hashlib
import importlib.util
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import ModuleType
from typing import IO, Any

import httpx
import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"


def run_example(name: str, *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    """``python -W error examples/NAME ARGS`` in a fresh interpreter, output captured."""
    return subprocess.run(
        [sys.executable, "-W", "error", str(EXAMPLES / name), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.mark.timeout(60)
def test_quickstart_shows_the_batches_overlapping() -> None:
    """The demo runs from sync and async code and each batch overlaps its calls."""
    result = run_example("quickstart.py", timeout=50)
    assert result.returncode == 0, result.stderr
    assert "sync code: ['disk read', 'net fetched', 'inner.a read + inner.b fetched']" in (
        result.stdout
    )
    assert "async code: ['disk read'" in result.stdout
    overlaps = [float(x) for x in re.findall(r"\(([\d.]+)x overlap\)", result.stdout)]
    assert len(overlaps) == 2
    # Four 0.2 s calls, one nested: sequential would be 1.0x; any real overlap is > 1.5x.
    assert all(overlap > 1.5 for overlap in overlaps), result.stdout


@pytest.mark.timeout(120)
def test_torch_ensemble_gives_the_sequential_outputs_from_sync_and_async_code() -> None:
    """The ensemble example runs both ways; its speed-up is printed, not asserted (a
    timing on a shared machine), and `make bench` measures it properly (rows 9-11)."""
    result = run_example("torch_ensemble.py", timeout=110)
    assert result.returncode == 0, result.stderr
    assert "same outputs: True; inference tensors: True" in result.stdout
    speedups = re.findall(
        r"forked from (?:sync code|async handler): +[\d.]+ ms \(([\d.]+)x\)", result.stdout
    )
    assert len(speedups) == 2, result.stdout


@pytest.mark.timeout(120)
def test_distributed_runs_the_batch_on_threads_processes_and_a_local_cluster() -> None:
    """The times are printed, not asserted (a timing on a shared machine); `make bench`
    measures them (row 15)."""
    result = run_example("distributed.py", timeout=110)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    for target in ("threads", "processes", "dask"):
        assert re.search(rf"^  {target}: +[\d.]+ s", out, re.MULTILINE), out
    assert "an error from the cluster: ValueError: expected a positive number, got -1" in out
    assert "same results everywhere: True" in out
    assert "Traceback" not in result.stderr


@pytest.mark.timeout(60)
@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_anyio_app_runs_on_both_backends(backend: str) -> None:
    result = run_example("anyio_app.py", "--backend", backend, timeout=50)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert f"running on {backend}" in out
    assert "task group: report checksum=668, report detail after 0.05s" in out
    assert "deadline: hit=True, quick='quick after 0.05s', slow cancelled=True" in out
    assert "scope raised: ['order 7 was refused']" in out
    assert "sibling cancelled=True" in out


def load_example(name: str) -> ModuleType:
    """Import ``examples/<name>.py`` (its ``main()`` does not run) to reuse its functions."""
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while they are made
    spec.loader.exec_module(module)
    return module


@pytest.mark.timeout(60)
def test_sync_script_forks_blocking_calls_from_plain_sync_code() -> None:
    """The sync example gives the right digests, overlaps its downloads, times a wait out
    with the builtin TimeoutError and gets the call's own FileNotFoundError back."""
    result = run_example("sync_script.py", timeout=50)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    out = result.stdout
    example = load_example("sync_script")
    assert "4 downloads of 0.2 s each, then SHA-256 of each file:" in out
    for name in ["a.bin", "b.bin", "c.bin", "d.bin"]:
        digest = hashlib.sha256(example.content(name)).hexdigest()
        assert f"  {name}: {digest[:16]}\n" in out
    assert "same digests both ways: True" in out
    assert "timeout: no value after 0.05 s, TimeoutError raised" in out
    assert "timeout: the call went on and wrote late.bin" in out
    assert "error: FileNotFoundError for missing.bin" in out
    assert "error: raised in sha256(): True" in out
    speedup = re.search(r"forked: +[\d.]+ s \(([\d.]+)x faster\)", out)
    assert speedup is not None, out
    # Four 0.2 s downloads: one after another is 1.0x, all at once about 3-4x.
    assert float(speedup[1]) > 1.5, out


class Service:
    """examples/async_service.py on uvicorn in a subprocess, on a port uvicorn picks.

    Both pipes are read by threads (a full pipe would block the server); the stderr
    reader hands its lines over, so the test waits for uvicorn's "running on" line with a
    deadline instead of sleeping or guessing a free port.
    """

    LISTENING = re.compile(r"Uvicorn running on http://127\.0\.0\.1:(\d+)")

    def __init__(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-W", "error", str(EXAMPLES / "async_service.py"), "--port", "0"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self._stderr_lines: queue.Queue[str | None] = queue.Queue()
        self._readers = [
            threading.Thread(target=self._read, args=(self.process.stdout, self.stdout, None)),
            threading.Thread(
                target=self._read, args=(self.process.stderr, self.stderr, self._stderr_lines)
            ),
        ]
        for reader in self._readers:
            reader.start()

    @staticmethod
    def _read(pipe: IO[str], lines: list[str], handoff: queue.Queue[str | None] | None) -> None:
        with pipe:
            for line in pipe:
                lines.append(line)
                if handoff is not None:
                    handoff.put(line)
        if handoff is not None:
            handoff.put(None)  # end of file: the server exited

    def wait_until_listening(self, timeout: float) -> int:
        """The port, once uvicorn logs that it listens on it."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self._stderr_lines.get(timeout=max(deadline - time.monotonic(), 0))
            except queue.Empty:
                pytest.fail(f"no 'Uvicorn running on' after {timeout} s: {''.join(self.stderr)}")
            if line is None:
                pytest.fail(f"the service exited before it listened: {''.join(self.stderr)}")
            listening = self.LISTENING.search(line)
            if listening:
                return int(listening[1])

    def stop(self) -> int | None:
        """Ctrl+C, as a user would; kill it only if it does not exit in time."""
        # SIGINT, not SIGTERM: uvicorn shuts down gracefully on both, then raises the
        # signal again so that the exit status tells which one stopped it; SIGINT
        # becomes a KeyboardInterrupt that uvicorn.run() catches (exit status 0), where
        # SIGTERM's default action ends the process with status -15.
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        for reader in self._readers:
            reader.join(timeout=10)
        return self.process.returncode


async def get_all(port: int, paths: list[str]) -> list[httpx.Response]:
    """GET all ``paths`` at once."""
    # trust_env=False: straight to loopback, whatever proxy the environment names.
    async with httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{port}", trust_env=False, timeout=30
    ) as client:
        return await asyncio.gather(*(client.get(path) for path in paths))


@pytest.mark.timeout(120)
def test_async_service_overlaps_the_three_calls_of_each_request() -> None:
    """The Starlette app on uvicorn answers concurrent requests with the values of its
    three forked calls (HTTP, blocking, torch), the calls of a request ran at one moment,
    and the server stops on Ctrl+C with status 0, no traceback and no warning."""
    users = [0, 1, 7, 42]
    service = Service()
    try:
        port = service.wait_until_listening(timeout=60)
        responses = asyncio.run(
            get_all(port, [f"/recommend?user={user}" for user in users] + ["/recommend"])
        )
    finally:
        returncode = service.stop()
    stderr = "".join(service.stderr)
    assert returncode == 0, stderr
    assert "Traceback" not in stderr
    assert "warning" not in stderr.lower()
    assert "Finished server process" in stderr

    *answers, bad = responses
    assert bad.status_code == 400
    example = load_example("async_service")
    with torch.random.fork_rng(devices=[]):  # make_recommender() seeds torch's RNG
        recommender = example.make_recommender()
    for user, response in zip(users, answers, strict=True):
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        assert body["user"] == user
        assert body["profile"] == {"user": user, "name": f"user {user}"}
        assert body["history"] == [user * 10, user * 10 + 1, user * 10 + 2]
        with torch.inference_mode():
            expected = example.rank(recommender, user)
        assert [top["item"] for top in body["top_items"]] == [top["item"] for top in expected]
        assert [top["score"] for top in body["top_items"]] == pytest.approx(
            [top["score"] for top in expected], abs=2e-4
        )
        # The HTTP call and the database query of each request ran at one moment.
        assert _all_ran_at_once([body["calls"]["profile"], body["calls"]["history"]]), body
    # And so did all three calls of a request: of one at least, as the four requests'
    # rankings share the module pool's threads (on 2 cores, 2 at a time), and under load
    # a request's ranking may start only after its 0.2 s calls are over.
    assert any(_all_ran_at_once(list(r.json()["calls"].values())) for r in answers), [
        r.json()["calls"] for r in answers
    ]


def _all_ran_at_once(spans: list[dict[str, float]]) -> bool:
    """Intervals on one time line all intersect when the last one to start started
    before the first one to end ended: at that moment all of them ran."""
    return max(span["start"] for span in spans) < min(span["end"] for span in spans)
