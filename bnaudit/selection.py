"""Which rules run: ``select`` / ``ignore`` by code or prefix, flake8's DecisionEngine.

The longest matching prefix decides; on a tie ``ignore`` wins, because a user who
names the same code in both places most likely wants it quiet.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable


def _longest(code: str, prefixes: Iterable[str]) -> int:
    """Length of the longest prefix in ``prefixes`` matching ``code``; -1 when none does."""
    best = -1
    for prefix in prefixes:
        if prefix == "ALL":
            prefix = ""
        if code.startswith(prefix):
            best = max(best, len(prefix))
    return best


@dataclass(frozen=True)
class Selection:
    select: tuple[str, ...] = ("ALL",)
    ignore: tuple[str, ...] = ()
    extend_select: tuple[str, ...] = ()

    def is_selected(self, code: str) -> bool:
        selected = _longest(code, self.select + self.extend_select)
        ignored = _longest(code, self.ignore)
        if selected < 0:
            return False
        return selected > ignored

    def unknown(self, known_codes: Iterable[str]) -> list[str]:
        """Codes or prefixes that match no known rule (a typo the user should hear about)."""
        known = list(known_codes)
        return [
            p
            for p in self.select + self.ignore + self.extend_select
            if p != "ALL" and not any(code.startswith(p) for code in known)
        ]
