"""The plugins in plugins/ import nothing private: only bnaudit and bnaudit.plugin_api."""

from __future__ import annotations

import ast

import pytest

import bnaudit.plugin_api
from conftest import ROOT

PUBLIC = {"bnaudit", "bnaudit.plugin_api"}
PLUGIN_SOURCES = sorted(p for p in (ROOT / "plugins").glob("*/*/**/*.py") if "tests" not in p.parts)


@pytest.mark.parametrize("source", PLUGIN_SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_plugins_import_only_the_public_api(source):
    imported = set()
    for node in ast.walk(ast.parse(source.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "bnaudit":
            imported.add(node.module)
        elif isinstance(node, ast.Import):
            imported |= {alias.name for alias in node.names if alias.name.split(".")[0] == "bnaudit"}
    assert imported and imported <= PUBLIC, f"{source.name} imports private modules: {sorted(imported - PUBLIC)}"


def test_every_public_name_is_there():
    assert PLUGIN_SOURCES
    for name in bnaudit.plugin_api.__all__:
        assert getattr(bnaudit.plugin_api, name) is not None, name
