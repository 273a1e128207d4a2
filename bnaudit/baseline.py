"""Baselines: accept the findings a repository has today, fail only on new ones.

A model file has no place for a suppression comment, so the accepted findings live in a
JSON file (``--write-baseline FILE``) that ``--baseline FILE`` subtracts from later runs.
An entry is keyed on (model path, rule code, layer path), never on a file hash: a
retrained model, with new weights but the same architecture, keeps its entries. Model
paths are stored relative to the baseline file, so the same baseline works from any
working directory.

An entry that no longer matches a finding is *stale*: the problem was fixed (or the
layer renamed), and the entry would silently accept the problem if it came back. Stale
entries are reported as notes on their model (and ``--fail-on-stale`` fails on them);
only models audited in this run, and rules that ran on them, are judged, so a partial
run (one file, ``--select BN1``) does not call the rest of the baseline stale.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from .output import write_atomic
from .result import AuditResult

FORMAT_VERSION = 1

Key = tuple[str, str, str]  # (model path relative to the baseline file, rule code, layer path)


class BaselineError(Exception):
    """The baseline file is missing or not one bnaudit wrote (exit code 2)."""


@dataclass
class Outcome:
    """What applying a baseline did: findings suppressed, and entries that matched nothing."""

    suppressed: int = 0
    stale: list[Key] = field(default_factory=list)


def model_key(model: str | Path, root: Path) -> str:
    """A model's path relative to the baseline's directory, with ``/`` separators."""
    return Path(os.path.relpath(Path(model).resolve(), root)).as_posix()


def write(path: str | Path, results: Iterable[AuditResult], version: str) -> int:
    """Record every finding of ``results`` in ``path`` (atomically); return how many."""
    root = Path(path).resolve().parent
    entries = sorted(
        (
            {"model": model_key(f.model, root), "code": f.code, "layer": f.layer, "name": f.name, "message": f.message}
            for result in results
            for f in result.findings
        ),
        key=lambda e: (e["model"], e["code"], e["layer"], e["message"]),
    )
    document = {"version": FORMAT_VERSION, "tool": f"bnaudit {version}", "findings": entries}
    write_atomic(path, json.dumps(document, indent=2) + "\n")
    return len(entries)


@dataclass
class Baseline:
    root: Path
    entries: Counter[Key]

    @classmethod
    def read(cls, path: str | Path) -> "Baseline":
        path = Path(path)
        try:
            document = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise BaselineError(f"--baseline {path}: no such file (create it with --write-baseline {path})") from None
        except (OSError, ValueError) as exc:
            raise BaselineError(f"--baseline {path}: not a bnaudit baseline ({exc})") from None
        if not isinstance(document, dict) or document.get("version") != FORMAT_VERSION or not isinstance(document.get("findings"), list):
            raise BaselineError(f"--baseline {path}: not a version-{FORMAT_VERSION} bnaudit baseline; write it again with --write-baseline")
        try:
            entries = Counter((str(e["model"]), str(e["code"]), str(e["layer"])) for e in document["findings"])
        except (KeyError, TypeError):
            raise BaselineError(f"--baseline {path}: an entry lacks model, code or layer; write it again with --write-baseline") from None
        return cls(path.resolve().parent, entries)

    def apply(self, results: list[AuditResult]) -> Outcome:
        """Drop the findings the baseline accepts (in place) and note its stale entries."""
        outcome = Outcome()
        remaining = Counter(self.entries)
        audited: dict[str, AuditResult] = {}
        for result in results:
            if result.unreadable:
                continue
            model = model_key(result.path, self.root)
            audited[model] = result
            kept = []
            for finding in result.findings:
                key = (model, finding.code, finding.layer)
                if remaining[key] > 0:
                    remaining[key] -= 1
                    outcome.suppressed += 1
                else:
                    kept.append(finding)
            result.meta["baseline_suppressed"] = len(result.findings) - len(kept)
            result.findings = kept
        for key, count in sorted(remaining.items()):
            model, code, layer = key
            result = audited.get(model)
            if result is not None and code in result.rules_run:
                result.notes.extend([_stale_note(code, layer)] * count)
                outcome.stale.extend([key] * count)
            elif result is None and not (self.root / model).exists():
                outcome.stale.extend([key] * count)
        return outcome


def _stale_note(code: str, layer: str) -> str:
    return f"baseline entry {code} at {layer or '<model>'!s} matches no finding any more (stale): refresh the baseline with --write-baseline"
