"""Builds ``forkwait._speedups`` (the C fast paths) into the wheel.

Without a C compiler the wheel is pure Python, and forkwait runs the same, a little
slower: a failed build says why on stderr and goes on.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from hatchling.builders.hooks.plugin.interface import BuildHookInterface

SOURCE = Path("src", "forkwait", "_speedups.c")


class SpeedupsBuildHook(BuildHookInterface):
    PLUGIN_NAME = "custom"

    scratch: Path | None = None

    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        if self.target_name != "wheel":
            return
        source = Path(self.root, SOURCE)
        if version == "editable":
            # One built from an older source must not outlive a build that fails.
            for old in source.parent.glob("_speedups.*.so"):
                old.unlink()
        self.scratch = Path(tempfile.mkdtemp(prefix="forkwait-build-"))
        try:
            built = _compile(source, self.scratch)
        except Exception as exc:  # no compiler, no headers: pure Python it is
            print(f"forkwait: the C fast paths were not built ({exc})", file=sys.stderr)
            return
        build_data["pure_python"] = False
        build_data["infer_tag"] = True
        if version == "editable":
            # An editable install imports src/forkwait itself: the module goes there.
            shutil.copy2(built, source.with_name(built.name))
        else:
            build_data["force_include"][str(built)] = f"forkwait/{built.name}"

    def finalize(self, version: str, build_data: dict[str, Any], artifact_path: str) -> None:
        if self.scratch is not None:
            shutil.rmtree(self.scratch, ignore_errors=True)


def _compile(source: Path, scratch: Path) -> Path:
    """Compile ``source`` with the interpreter's own settings (setuptools' build_ext)."""
    from setuptools import Distribution, Extension

    extension = Extension("forkwait._speedups", [str(source)])
    command: Any = Distribution({"ext_modules": [extension]}).get_command_obj("build_ext")
    command.build_lib = str(scratch / "lib")
    command.build_temp = str(scratch / "temp")
    command.ensure_finalized()
    command.run()
    return Path(command.get_ext_fullpath(extension.name))
