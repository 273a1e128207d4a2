"""Every hook and every rule is documented (datasette's tests/test_docs.py habit)."""

from __future__ import annotations

import inspect
import re

import pytest

from bnaudit import hookspecs
from bnaudit.plugins import collect_rules, make_plugin_manager
from bnaudit.rule import DOC_SECTIONS
from conftest import ROOT

HOOKS = [name for name, value in vars(hookspecs).items() if name.startswith("bnaudit_") and inspect.isfunction(value)]
RULES = collect_rules(make_plugin_manager(autoload=False))


@pytest.mark.parametrize("hook", HOOKS)
def test_every_hook_has_a_docstring(hook):
    doc = inspect.getdoc(getattr(hookspecs, hook))
    assert doc and len(doc) > 40


@pytest.mark.parametrize("code", sorted(RULES))
def test_every_rule_has_all_doc_sections(code):
    sections = RULES[code].doc_sections()
    for section in DOC_SECTIONS:
        assert sections.get(section), f"{code} lacks '## {section}'"


def test_catalog_codes_names_and_severities_match_rules_md():
    """RULES.md is a contract: every built-in rule matches its row exactly."""
    catalog = (ROOT.parent / "shared" / "RULES.md").read_text()
    rows = dict(
        (m.group(1), (m.group(2), m.group(3)))
        for m in re.finditer(r"^\| (BN\d{3}) \| ([a-z-]+) \| (error|warning|info)", catalog, re.M)
    )
    for code, rule in RULES.items():
        if code.startswith("BN"):
            assert rows[code] == (rule.name, rule.severity.label), code
    static = {c for c in rows if c[2] in "125"}
    assert static <= set(RULES)


def test_readme_lists_every_rule():
    readme = (ROOT / "README.md").read_text()
    for code, rule in RULES.items():
        if code.startswith("BN"):
            assert code in readme and rule.name in readme, code
