"""``bnaudit diff BASE TUNED``: what fine-tuning did to the BN layers.

Pairs the BN layers of two checkpoints (:mod:`bnaudit.checkpoints`), reports the change
of each (moving mean in units of the base's standard deviation, standard deviation,
gamma, beta, frozen in each) and runs the rules that need a base checkpoint (BN211,
BN212). Reports, selection, config and exit codes work as in ``check``; like the static
``check``, it reads the files with h5py and imports no TensorFlow.
"""

from __future__ import annotations

import click

from ..config import ConfigError, config_options, given_on_command_line, load as load_config
from ..engine import AuditOptions, Auditor
from ..findings import Severity
from ..output import refuse_inputs
from ..parallel import native_stderr_silenced
from ..plugins import PluginError
from ..selection import Selection
from .format_pairing import FormatOutputCommand
from .options import codes, conclude, fail, gate_options, rendering_options, report_options, targets


@click.command(cls=FormatOutputCommand)
@click.argument("base")
@click.argument("tuned")
@gate_options
@click.option("-p", "--plugin", "plugins", multiple=True, help="Load a plugin module (repeatable); `-p no:NAME` switches one off.")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
@click.option("-q", "--quiet", is_flag=True, help="Print findings and errors only: no notes, no per-layer table, no summary.")
@rendering_options
@config_options
def diff(base, tuned, select, ignore, extend_select, fail_on, exit_zero, formats, outputs, plugins, debug, quiet, templates, timestamp, config_file, isolated) -> None:
    """Compare two checkpoints' BN layers: BASE before fine-tuning, TUNED after (BN211, BN212).

    \b
    bnaudit diff base.keras tuned.keras
    bnaudit diff base.h5 tuned.keras --format html -o diff.html
    """
    options = AuditOptions(
        selection=Selection(codes(select) if select else ("ALL",), codes(ignore), codes(extend_select)),
        fail_on=Severity.parse(fail_on),
        plugins=tuple(plugins),
        debug=debug,
    )
    try:
        project = load_config(config_file, isolated)
        options = project.options_for(tuned, project.apply(options, given_on_command_line(click.get_current_context())))
        auditor = Auditor(options)
        project.validate(auditor.rules)
    except (PluginError, ConfigError) as exc:
        fail(str(exc))
    unknown = options.selection.unknown(auditor.rules)
    if unknown:
        fail(f"{', '.join(unknown)} match no rule; `bnaudit rules` lists the codes")
    if not auditor.selected_rules(options, pair=True):
        compared = ", ".join(code for code, rule in auditor.rules.items() if "base" in rule.needs)
        fail(f"the selection leaves none of the rules diff runs ({compared}); the others run with `bnaudit check`")
    pairs = targets(auditor, formats, outputs)
    refuse_inputs([("-o", out) for out in outputs], [base, tuned])
    with native_stderr_silenced(not debug):  # TensorFlow's start-up lines, when a SavedModel's variables are read
        result = auditor.audit_pair(base, tuned)
    if result.unreadable:  # an input that cannot be compared: one line, no report
        [error] = [e for e in result.errors if not e.rule]
        fail(f"{error.message}{f' ({error.hint})' if error.hint else ''}")
    conclude(auditor, [result], options, pairs, {**report_options(templates, timestamp), "quiet": quiet}, exit_zero=exit_zero)
