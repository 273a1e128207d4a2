"""Which ``-o FILE`` goes with which ``--format``, for every command that renders reports.

click keeps the values of a repeated option but not how they interleave with another
option's, so the command records its raw arguments and the pairing reads them. An
``-o`` given without any ``--format`` takes the format its file suffix names.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Mapping

import click

if TYPE_CHECKING:
    from ..reporters import Reporter


class FormatOutputCommand(click.Command):
    """Keeps the raw arguments, so each ``-o`` pairs with the ``--format`` written just before it."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        ctx.meta["bnaudit.args"] = list(args)
        return super().parse_args(ctx, args)


def pair_formats_and_outputs(formats: tuple[str, ...], outputs: tuple[str, ...]) -> list[tuple[str, str | None]]:
    """Each ``-o`` belongs to the ``--format`` just before it on the command line
    (``--format github --format sarif -o x.sarif`` sends SARIF to the file, annotations to
    stdout). Where the order cannot be read, the n-th ``-o`` goes with the n-th format.
    Raises ValueError for an ``-o`` written before every ``--format``."""
    by_position = [(f, outputs[i] if i < len(outputs) else None) for i, f in enumerate(formats)]
    args = click.get_current_context().meta.get("bnaudit.args")
    if not args or "--format" not in " ".join(args):
        return by_position
    pairs: list[list] = []
    tokens = iter(args[: args.index("--")] if "--" in args else args)
    for token in tokens:
        name, has_value, value = token.partition("=")
        if name == "--format":
            pairs.append([value if has_value else next(tokens, ""), None])
        elif name in ("-o", "--output") or (token.startswith("-o") and len(token) > 2):
            output = value if has_value else token[2:] if name.startswith("-o") and len(token) > 2 else next(tokens, "")
            if not pairs:  # `-o r.json --format html` would write HTML into r.json
                raise ValueError(f"-o {output} comes before any --format; give each --format before its -o")
            if pairs[-1][1] is not None:
                return by_position  # two -o after one --format: keep the simple rule
            pairs[-1][1] = output
    if tuple(f for f, _ in pairs) != formats or tuple(o for _, o in pairs if o is not None) != outputs:
        return by_position
    return [(f, o) for f, o in pairs]


def format_for_suffix(output: str, reporters: "Mapping[str, Reporter]") -> str:
    """The format whose reporter writes ``output``'s suffix (``report.html`` -> ``html``).

    Raises ValueError, naming the suffixes known, when no format or several formats
    (``.txt``: text and github) write that suffix: the caller refuses, never guesses.
    """
    suffix = Path(output).suffix.lower()
    matching = [name for name, reporter in reporters.items() if reporter.suffix == suffix]
    if len(matching) == 1:
        return matching[0]
    if matching:
        raise ValueError(f"-o {output}: {' and '.join(matching)} both write {suffix}; give --format NAME before -o")
    known = ", ".join(sorted({r.suffix for r in reporters.values()}))
    raise ValueError(f"-o {output}: no format writes {suffix or 'files without a suffix'} ({known}); give --format NAME before -o")
