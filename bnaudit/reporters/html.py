"""The HTML report: one offline file to keep as a CI artifact or mail to a colleague.

Templates live in the top-level ``templates/`` directory (shipped inside the wheel as
``bnaudit/templates``) and are rendered with autoescaping always on: layer names and
config strings come from the model file and are untrusted. Styles and the little script
(severity filter, sortable tables) are inlined and pinned by a Content-Security-Policy
with their hashes, so the page makes no request of any kind and runs no other script,
even if a model's strings tried to inject one.

Templates are overridable, as in datasette: ``--templates DIR`` is searched first, then
the built-ins; a template in DIR can extend the built-in of the same name as
``default:report.html.j2``; plugins adjust the environment through the
``bnaudit_prepare_jinja2_environment`` hook (filters, globals, loaders).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

from ..hookspecs import hookimpl
from . import RenderError, Report, Reporter

if TYPE_CHECKING:
    import jinja2
    from markupsafe import Markup

# jinja2, markupsafe and the views behind the page are imported when an HTML report is
# rendered: registering the format costs every other run nothing.

#: ``bnaudit/templates``: the top-level ``templates/`` in a checkout (a symlink), a real
#: directory inside the wheel.
BUILTIN_TEMPLATES = Path(__file__).resolve().parent.parent / "templates"
PAGE = "report.html.j2"


def environment(report: Report) -> "jinja2.Environment":
    import jinja2

    from .labels import label
    from .measurements import format_value

    builtin = jinja2.FileSystemLoader(str(BUILTIN_TEMPLATES))
    loaders: list[jinja2.BaseLoader] = []
    if report.options.get("templates"):
        loaders.append(jinja2.FileSystemLoader(str(report.options["templates"])))
    loaders += [builtin, jinja2.PrefixLoader({"default": builtin}, delimiter=":")]
    env = jinja2.Environment(
        loader=jinja2.ChoiceLoader(loaders),
        autoescape=True,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=False,
    )
    env.filters["markdown"] = markdown
    env.filters["value"] = format_value
    env.filters["label"] = label
    env.filters["breakable"] = breakable
    if report.plugin_manager is not None:
        report.plugin_manager.hook.bnaudit_prepare_jinja2_environment(env=env)
    return env


def render(report: Report) -> str:
    import jinja2
    from markupsafe import Markup

    from .views import build

    context = build(report)
    env = environment(report)
    try:
        css = env.get_template("report.css").render()
        script = env.get_template("report.js").render()
        page = env.get_template(PAGE).render(
            report=report,
            css=Markup(css),
            script=Markup(script),
            csp=Markup(content_security_policy(css, script)),  # fixed words and base64: nothing to escape
            generated=report.options.get("timestamp"),
            **context,
        )
    except jinja2.TemplateSyntaxError as exc:
        raise RenderError(f"template {exc.filename or exc.name}, line {exc.lineno}: {exc.message}") from None
    except jinja2.TemplateNotFound as exc:
        raise RenderError(f"template {exc.name!r} not found (in --templates or the built-ins)") from None
    except Exception as exc:  # an overriding template can fail in any way: say so in one line
        raise RenderError(f"template failed: {type(exc).__name__}: {exc}") from None
    return page.rstrip("\n") + "\n"


def content_security_policy(css: str, script: str) -> str:
    """Nothing may load; only the exact inline style and script of this page may apply."""
    import base64
    import hashlib

    def digest(text: str) -> str:
        return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode("utf-8")).digest()).decode("ascii") + "'"

    return f"default-src 'none'; style-src {digest(css)}; script-src {digest(script)}; img-src data:; base-uri 'none'; form-action 'none'"


def breakable(path: str) -> Markup:
    """A path that may wrap after each ``/`` and nowhere else (never mid-name)."""
    from markupsafe import Markup, escape

    return Markup("/<wbr>").join(escape(part) for part in str(path).split("/"))


_FENCE = re.compile(r"^```[a-zA-Z0-9_+-]*\n(.*?)^```\s*$", re.MULTILINE | re.DOTALL)
_INLINE_CODE = re.compile(r"`([^`\n]+)`")


def markdown(text: str) -> Markup:
    """The little Markdown rule docs use: fenced code, paragraphs, ``- `` lists, `code`.

    Everything is escaped first; only the markup this function adds is trusted.
    """
    from markupsafe import Markup, escape

    html: list[str] = []
    position = 0
    for match in _FENCE.finditer(text):
        html += _paragraphs(text[position : match.start()])
        html.append(f"<pre><code>{escape(match.group(1).rstrip())}</code></pre>")
        position = match.end()
    html += _paragraphs(text[position:])
    return Markup("\n".join(html))


def _paragraphs(text: str) -> list[str]:
    html = []
    for block in re.split(r"\n\s*\n", text.strip()):
        if not block.strip():
            continue
        lines = block.splitlines()
        if all(line.lstrip().startswith("- ") for line in lines):
            items = "".join(f"<li>{_inline(line.lstrip()[2:])}</li>" for line in lines)
            html.append(f"<ul>{items}</ul>")
        else:
            html.append(f"<p>{_inline(' '.join(line.strip() for line in lines))}</p>")
    return html


def _inline(text: str) -> str:
    from markupsafe import escape

    return _INLINE_CODE.sub(r"<code>\1</code>", str(escape(text)))


@hookimpl
def bnaudit_register_reporters():
    return [Reporter("html", "one offline HTML file: summary, findings with rule docs, charts", render, ".html")]
