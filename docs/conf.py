"""Sphinx configuration: MyST Markdown pages, furo, API reference from the docstrings."""

from __future__ import annotations

import forkwait

project = "forkwait"
author = "The forkwait developers"
copyright = "2026, The forkwait developers"
release = forkwait.__version__

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinxcontrib.mermaid",
]

source_suffix = {".md": "markdown"}
exclude_patterns = ["_build", "README.md"]
myst_enable_extensions = ["colon_fence", "deflist"]
myst_heading_anchors = 3
# ```mermaid blocks in the Markdown pages are diagrams, not code listings.
myst_fence_as_directive = ["mermaid"]

autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_preserve_defaults = True

html_theme = "furo"
html_title = "forkwait"
html_static_path: list[str] = []


def _point_autodoc_at_the_defining_modules() -> None:
    # forkwait shows its public names as `forkwait.X`; autodoc reads overloads and source
    # order from the module named in `__module__`, so give it the private one back. Not
    # for `fork`: its ParamSpec overloads render badly, so api.md spells its signature.
    import importlib
    import pkgutil

    for info in pkgutil.iter_modules(forkwait.__path__):
        module = importlib.import_module(f"forkwait.{info.name}")
        for name in set(forkwait.__all__) - {"fork"}:
            obj = vars(module).get(name)
            if obj is not None and obj is getattr(forkwait, name):
                obj.__module__ = module.__name__


_point_autodoc_at_the_defining_modules()
