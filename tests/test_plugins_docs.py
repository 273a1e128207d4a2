"""docs/plugins.md stays true: its hook reference is the hookspecs' docstrings."""

from __future__ import annotations

import inspect
import re

from conftest import ROOT

from bnaudit import hookspecs

GUIDE = ROOT / "docs" / "plugins.md"
REFERENCE = re.compile(r"<!-- hook reference:[^\n]*-->\n(.*?)\n<!-- end of hook reference -->", re.S)


def hook_reference() -> str:
    """The reference section as docs/plugins.md must hold it, written from bnaudit/hookspecs.py."""
    specs = sorted((f for f in vars(hookspecs).values() if hasattr(f, f"{hookspecs.PROJECT}_spec")), key=lambda f: f.__code__.co_firstlineno)
    sections = []
    for spec in specs:
        annotations = {name: str(value).strip("'\"") for name, value in spec.__annotations__.items()}
        returns = annotations.pop("return")
        params = ", ".join(f"{name}: {kind}" for name, kind in annotations.items())
        sections.append(f"### `{spec.__name__}({params}) -> {returns}`\n\n{inspect.cleandoc(spec.__doc__)}")
    return "\n\n".join(sections)


def test_the_hook_reference_is_the_hookspecs_docstrings():
    found = REFERENCE.search(GUIDE.read_text(encoding="utf-8"))
    assert found, "docs/plugins.md lost its hook reference markers"
    expected = hook_reference()
    assert found.group(1) == expected, f"docs/plugins.md's hook reference is out of date; it should read:\n\n{expected}"


def test_every_hook_is_documented_and_every_documented_hook_exists():
    documented = set(re.findall(r"^### `(bnaudit_\w+)\(", GUIDE.read_text(encoding="utf-8"), re.M))
    specs = {name for name, f in vars(hookspecs).items() if hasattr(f, f"{hookspecs.PROJECT}_spec")}
    assert documented == specs
