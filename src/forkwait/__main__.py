"""``python -m forkwait trace SCRIPT.py [ARGS...] -o trace.html|trace.json``.

Runs the script as ``__main__`` under ``forkwait.trace()`` and writes what it recorded:
an HTML timeline for ``.html``, Trace Event JSON (Perfetto) for ``.json``. The script's
output and exit code are its own.
"""

from __future__ import annotations

import argparse
import runpy
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._trace import Trace

SUFFIXES = (".html", ".json")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m forkwait",
        description="Tools for forkwait programs.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    trace = commands.add_parser(
        "trace",
        help="run a script under forkwait.trace() and save what ran when",
        usage="python -m forkwait trace SCRIPT.py [ARGS...] -o OUTPUT.html|OUTPUT.json",
        description="Run SCRIPT.py as __main__ under forkwait.trace(); write an HTML "
        "timeline (.html) or Trace Event JSON for Perfetto (.json). -o may come first too.",
    )
    trace.add_argument("-o", "--output", help="the file to write: .html or .json")
    trace.add_argument("script", help="the Python script to run")
    trace.add_argument("args", nargs=argparse.REMAINDER, help="arguments for the script")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    options = parser.parse_args(argv)
    args: list[str] = options.args
    output: str | None = options.output
    if output is None and len(args) >= 2 and args[-2] in ("-o", "--output"):
        output, args = args[-1], args[:-2]
    elif output is None and args and args[-1].startswith(("-o=", "--output=")):
        output, args = args[-1].split("=", 1)[1], args[:-1]  # -o=FILE after the script
    if output is None:
        parser.error("trace needs -o OUTPUT.html or -o OUTPUT.json")
    target = Path(output)
    if target.suffix not in SUFFIXES:
        parser.error(f"-o {output}: the file must end in .html or .json")
    script = Path(options.script)
    if not script.is_file():
        parser.error(f"{options.script}: no such script")

    from ._trace import trace

    sys.argv = [str(script), *args]
    sys.path.insert(0, str(script.resolve().parent))  # as `python SCRIPT.py` would
    code: int | str | None = 0
    with trace() as recorded:
        try:
            runpy.run_path(str(script), run_name="__main__")
        except SystemExit as exit_:
            code = exit_.code
        finally:  # an uncaught exception still leaves its trace, then propagates
            _write(recorded, target)
    if isinstance(code, str):
        print(code, file=sys.stderr)
        return 1
    return code or 0


def _write(recorded: Trace, target: Path) -> None:
    recorded._finish()  # the script is done: outcomes as they stand now
    if target.suffix == ".html":
        recorded.save_html(target)
    else:
        recorded.save(target)
    print(f"forkwait: {len(recorded.calls)} forks traced, written to {target}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
