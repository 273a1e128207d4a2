"""select / ignore by code or prefix: the longest match decides (flake8's DecisionEngine)."""

from __future__ import annotations

import pytest

from bnaudit.selection import Selection


@pytest.mark.parametrize(
    ("select", "ignore", "extend", "code", "expected"),
    [
        (("ALL",), (), (), "BN101", True),
        (("BN1",), (), (), "BN101", True),
        (("BN1",), (), (), "BN201", False),
        (("BN",), ("BN2",), (), "BN201", False),
        (("BN",), ("BN2",), (), "BN101", True),
        (("BN201",), ("BN2",), (), "BN201", True),  # longer select wins
        (("BN2",), ("BN201",), (), "BN201", False),  # longer ignore wins
        (("BN2",), ("BN2",), (), "BN202", False),  # tie: ignore wins
        (("BN1",), (), ("BN5",), "BN501", True),
        (("BN1",), (), ("BN5",), "BN301", False),
        ((), (), (), "BN101", False),
    ],
)
def test_decision(select, ignore, extend, code, expected):
    assert Selection(select, ignore, extend).is_selected(code) is expected


def test_unknown_codes_are_reported():
    assert Selection(("BN1", "BN9", "XX"), ("BN999",)).unknown(["BN101", "BN201"]) == ["BN9", "XX", "BN999"]
