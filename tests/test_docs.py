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


def test_the_readme_catalog_is_exactly_the_built_in_rules():
    """The README's rule table is the catalog users read: one row per built-in rule, with
    its code, name, default severity and summary, and no row for a rule that does not exist."""
    readme = (ROOT / "README.md").read_text()
    rows = {
        m.group(1): (m.group(2), m.group(3), m.group(4).strip())
        for m in re.finditer(r"^\| (BN\d{3}) \| ([a-z0-9-]+) \| (\w+) \| [^|]+ \| ([^|]+) \|$", readme, re.M)
    }
    built_in = {code: (rule.name, rule.severity.label, rule.summary) for code, rule in RULES.items() if code.startswith("BN")}
    assert rows == built_in


def test_the_tests_read_nothing_outside_the_repository():
    """A plain clone passes the README's test command: no test reaches above the clone."""
    reaching_out = [
        path.name
        for path in (ROOT / "tests").glob("*.py")
        if re.search(r"ROOT\.parent|\.\./shared|parent\s*/\s*\"shared\"", path.read_text(encoding="utf-8").replace("reaching_out", ""))
        and path.name != "test_docs.py"
    ]
    assert reaching_out == []
