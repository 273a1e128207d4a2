"""Model-supplied text made safe for a terminal or a CI log: one line, no control codes.

A model's file name and layer names are chosen by whoever wrote the file. Printed raw,
a newline in one starts a new log line (GitHub Actions reads ``::error ...::`` at the
start of any line of a step's output as a workflow command), an ESC sequence drives
the terminal, and a lone surrogate (valid in JSON, ``"\\ud800"``) cannot be encoded at
all. :func:`printable` replaces each such character with a visible Python-style escape
(``\\n`` -> ``\\x0a``), so what is printed is one line that shows what the file holds.
"""

from __future__ import annotations

import re

#: C0 and C1 controls, DEL, line/paragraph separators, bidirectional overrides and
#: isolates (they reorder what a terminal shows), and surrogates (not encodable).
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]")


def printable(text: object) -> str:
    """``str(text)`` with every control, reordering or unencodable character escaped.

    >>> printable("bn\\n::error::x\\x1b[2J")
    'bn\\\\x0a::error::x\\\\x1b[2J'
    """
    return _UNSAFE.sub(_escape, str(text))


def _escape(match: re.Match) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


#: Characters of an exception's message kept in its one-line form.
EXCEPTION_CHARS = 300


def exception_line(exc: BaseException) -> str:
    """``"Type: cause"`` in one line for an error message, ``--debug`` having the rest.

    The cause is the last non-empty line of the message that is not a TensorFlow node
    reference: an ``OpError`` puts the graph node's traceback first, then the reason
    ("The Conv2D op currently only supports the NHWC tensor format on the CPU..."), then
    ``[[{{node ...}}]] [Op:...]``; most libraries say it on one line. Cut at
    :data:`EXCEPTION_CHARS` characters.
    """
    text = str(getattr(exc, "message", None) or exc)
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith(("[[", "[Op:"))]
    cause = lines[-1] if lines else ""
    if len(cause) > EXCEPTION_CHARS:
        cause = cause[: EXCEPTION_CHARS - 3] + "..."
    return f"{type(exc).__name__}: {cause}" if cause else type(exc).__name__


def encoded(text: str) -> bytes:
    """A rendered report as UTF-8 bytes; a lone surrogate a model name carried becomes the
    JSON-style escape ``\\udc80`` instead of failing the whole write."""
    return text.encode("utf-8", "backslashreplace")
