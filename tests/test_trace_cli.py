"""python -m forkwait trace: runs a script under a trace, and leaves the script alone."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.conftest import run_python

pytestmark = pytest.mark.timeout(60)

SCRIPT = """
import sys
from forkwait import fork, wait

def double(x):
    return 2 * x

print("args:", sys.argv[1:])
print("value:", wait(fork(double, 21)))
sys.exit(3)
"""


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return run_python(*args, cwd=cwd)


@pytest.mark.parametrize("suffix", [".html", ".json"])
def test_the_script_runs_as_itself_and_its_trace_is_written(tmp_path: Path, suffix: str) -> None:
    script = tmp_path / "job.py"
    script.write_text(SCRIPT)
    plain = run(str(script), "a", "b", cwd=tmp_path)
    traced = run(
        "-m", "forkwait", "trace", str(script), "a", "b", "-o", f"out{suffix}", cwd=tmp_path
    )
    assert traced.returncode == plain.returncode == 3
    assert traced.stdout == plain.stdout == "args: ['a', 'b']\nvalue: 42\n"
    written = (tmp_path / f"out{suffix}").read_text()
    if suffix == ".json":
        events = json.loads(written)["traceEvents"]
        names = [e["name"] for e in events if e.get("cat") == "call"]
        assert names == ["double"]
    else:
        assert 'data-call="1"' in written
        assert "double" in written


@pytest.mark.parametrize("output", ["--output=out.json", "-o=out.json"])
def test_the_output_option_with_an_equals_sign_may_come_after_the_script(
    tmp_path: Path, output: str
) -> None:
    script = tmp_path / "job.py"
    script.write_text(SCRIPT)
    traced = run("-m", "forkwait", "trace", str(script), "a", output, cwd=tmp_path)
    assert traced.returncode == 3, traced.stderr
    assert traced.stdout == "args: ['a']\nvalue: 42\n"
    assert "traceEvents" in json.loads((tmp_path / "out.json").read_text())


def test_an_uncaught_exception_still_leaves_its_trace(tmp_path: Path) -> None:
    script = tmp_path / "fails.py"
    script.write_text(
        "from forkwait import fork, wait\nwait(fork(int, '7'))\nraise KeyError('x')\n"
    )
    traced = run("-m", "forkwait", "trace", "-o", "out.json", str(script), cwd=tmp_path)
    assert traced.returncode == 1
    assert "KeyError: 'x'" in traced.stderr
    assert (tmp_path / "out.json").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["trace", "job.py"], "needs -o"),
        (["trace", "job.py", "-o", "out.txt"], "must end in .html or .json"),
        (["trace", "missing.py", "-o", "out.html"], "no such script"),
        ([], "COMMAND"),
    ],
)
def test_bad_arguments_print_usage_and_exit_2(
    tmp_path: Path, args: list[str], message: str
) -> None:
    (tmp_path / "job.py").write_text(SCRIPT)
    result = run("-m", "forkwait", *args, cwd=tmp_path)
    assert result.returncode == 2
    assert "usage:" in result.stderr
    assert message in result.stderr
