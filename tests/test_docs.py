"""Every Python code block in docs/ and the README runs, in a fresh interpreter, as a
reader would paste it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.conftest import run_script

ROOT = Path(__file__).resolve().parent.parent
PAGES = [*sorted((ROOT / "docs").glob("*.md")), ROOT / "README.md"]
BLOCK = re.compile(r"^```python\n(.*?)^```$", re.DOTALL | re.MULTILINE)


def code_blocks() -> list[pytest.ParameterSet]:
    return [
        pytest.param(block, id=f"{page.stem}-{number}")
        for page in PAGES
        for number, block in enumerate(BLOCK.findall(page.read_text()), 1)
    ]


def test_the_docs_have_code_to_check() -> None:
    assert len(code_blocks()) >= 4


@pytest.mark.timeout(90)
@pytest.mark.parametrize("source", code_blocks())
def test_code_block_runs(source: str, tmp_path: Path) -> None:
    result = run_script(source, timeout=80, cwd=tmp_path)  # files it writes go there
    assert result.returncode == 0, result.stderr
    assert "Warning" not in result.stderr, result.stderr
