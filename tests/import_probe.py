"""A bnaudit plugin for the tests that check what a command imports.

Every model is audited in a child process (a forked worker), whose imports the main
process never sees. Loaded with ``-p import_probe`` (``tests/`` on the path), this
plugin appends the modules imported where each model was audited, as one JSON list per
model, to the file that ``IMPORT_PROBE_OUT`` names.
"""

import json
import os
import sys

import bnaudit


@bnaudit.hookimpl
def bnaudit_modify_findings():
    with open(os.environ["IMPORT_PROBE_OUT"], "a", encoding="utf-8") as out:
        out.write(json.dumps(sorted(sys.modules)) + "\n")


def modules_where_audited(path: str) -> set[str]:
    """The union of what the probe wrote to ``path`` (empty when no model was audited)."""
    if not os.path.exists(path):
        return set()
    with open(path, encoding="utf-8") as lines:
        return set().union(*(json.loads(line) for line in lines))
