"""Project config: found like ruff's and mypy's, checked key by key, under the CLI flags."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from bnaudit.config import ConfigError, find, load, parse
from bnaudit.engine import AuditOptions
from bnaudit.options import RuntimeOptions
from bnaudit.findings import Severity
from bnaudit.plugins import collect_rules, make_plugin_manager
from bnaudit.rule import rule
from conftest import SAMPLES, run_bnaudit

MODELS = {  # sample model -> the findings it gives with every rule on (sample_models/expected.json)
    "bias_before_bn.keras": {("BN102", "bn1"), ("BN102", "bn_fc")},
    "activation_before_bn.keras": {("BN103", "bn1"), ("BN103", "bn2")},
    "dropout_before_bn.keras": {("BN101", "bn2")},
}

#: A rule with a threshold, as a plugin module given with -p: flags every BN when the
#: model has more of them than ``limit``.
THRESHOLD_PLUGIN = '''
import bnaudit
from bnaudit import Severity, rule

@rule("TH101", "too-many-batchnorms", Severity.WARNING, settings={"limit": 100})
def too_many(ctx):
    """More BatchNormalization layers than the configured limit."""
    bns = ctx.graph.batchnorms()
    if len(bns) > ctx.setting("limit"):
        yield ctx.finding("", f"{len(bns)} BatchNormalization layers", details={"limit": ctx.setting("limit")})

@bnaudit.hookimpl
def bnaudit_register_rules():
    return [too_many]
'''


@pytest.fixture
def project(tmp_path) -> Path:
    """A repository with models in models/ and models/legacy/, and a nested working directory."""
    for name in MODELS:
        (tmp_path / "models" / "legacy").mkdir(parents=True, exist_ok=True)
        shutil.copy(SAMPLES / name, tmp_path / "models" / name)
        shutil.copy(SAMPLES / name, tmp_path / "models" / "legacy" / name)
    (tmp_path / "src" / "deep").mkdir(parents=True)
    (tmp_path / "plugin_th.py").write_text(THRESHOLD_PLUGIN)
    return tmp_path


def audit(project: Path, *args: str, cwd: Path | None = None):
    """Run check on the project's models; return (exit code, {(model, code, layer)}, stderr)."""
    proc = run_bnaudit("check", project / "models", "--format", "json", *args, cwd=cwd or project, env={"PYTHONPATH": str(project)})
    if proc.returncode == 2 and not proc.stdout:
        return proc.returncode, set(), proc.stderr
    found = {
        (Path(m["path"]).relative_to(project / "models").as_posix(), f["code"], f["layer"])
        for m in json.loads(proc.stdout)["models"]
        for f in m["findings"]
    }
    return proc.returncode, found, proc.stderr


def everything(prefix: str = "", codes: tuple[str, ...] = ("BN",)) -> set[tuple[str, str, str]]:
    return {(f"{prefix}{model}", code, layer) for model, found in MODELS.items() for code, layer in found if code.startswith(codes)}


def test_pyproject_is_found_from_a_subdirectory_and_its_selection_applies(project):
    (project / "pyproject.toml").write_text('[project]\nname = "models"\n\n[tool.bnaudit]\nselect = ["BN102"]\n')
    code, found, _ = audit(project, cwd=project / "src" / "deep")
    assert found == everything("", ("BN102",)) | everything("legacy/", ("BN102",))
    assert code == 0  # BN102 is info; the default fail-on is error


def test_bnaudit_toml_wins_in_its_directory_and_pyproject_without_table_is_passed_over(project):
    (project / "bnaudit.toml").write_text('select = ["BN103"]\n')
    (project / "pyproject.toml").write_text('[tool.bnaudit]\nselect = ["BN102"]\n')
    (project / "src" / "pyproject.toml").write_text('[project]\nname = "src"\n')
    _, found, _ = audit(project, cwd=project / "src" / "deep")
    assert {code for _, code, _ in found} == {"BN103"}


def test_config_and_isolated_choose_the_file_or_none(project):
    (project / "pyproject.toml").write_text('[tool.bnaudit]\nselect = ["BN102"]\n')
    (project / "ci.toml").write_text('select = ["BN101"]\n')
    assert audit(project, "--isolated")[1] == everything() | everything("legacy/")
    assert {code for _, code, _ in audit(project, "--config", "ci.toml")[1]} == {"BN101"}
    assert {code for _, code, _ in audit(project, "--config", "pyproject.toml")[1]} == {"BN102"}


def test_flags_override_the_config(project):
    (project / "pyproject.toml").write_text('[tool.bnaudit]\nselect = ["BN102", "BN101"]\nignore = ["BN101"]\nfail-on = "info"\n')
    code, found, _ = audit(project)
    assert code == 1 and {c for _, c, _ in found} == {"BN102"}  # info fails with the config's fail-on
    code, found, _ = audit(project, "--fail-on", "error", "--select", "BN103")
    assert code == 0 and {c for _, c, _ in found} == {"BN103"}  # --select replaces select
    _, found, _ = audit(project, "--extend-select", "BN103", "--ignore", "BN102")
    assert {c for _, c, _ in found} == {"BN103"}  # --ignore adds to ignore; extend-select adds


def test_per_file_ignores_take_globs_relative_to_the_config(project):
    (project / "pyproject.toml").write_text(
        '[tool.bnaudit.per-file-ignores]\n"models/legacy/*" = ["BN1"]\n"activation_*.keras" = ["BN103"]\n'
    )
    _, found, _ = audit(project, cwd=project / "src")
    assert found == everything() - everything("", ("BN103",))


def test_rule_thresholds_come_from_the_config(project):
    (project / "pyproject.toml").write_text('[tool.bnaudit]\nselect = ["TH"]\n\n[tool.bnaudit.th101]\nlimit = 2\n')
    _, found, _ = audit(project, "-p", "plugin_th")
    assert found == {("bias_before_bn.keras", "TH101", ""), ("legacy/bias_before_bn.keras", "TH101", "")}  # 3 BNs; the others have 2
    assert audit(project, "-p", "plugin_th", "--isolated", "--select", "TH")[1] == set()  # default limit 100


def test_an_unknown_key_is_one_line_naming_it_and_exit_2(project):
    (project / "pyproject.toml").write_text('[tool.bnaudit]\nselct = ["BN1"]\n')
    code, _, stderr = audit(project)
    assert code == 2
    assert stderr == (
        f"bnaudit: error: {project / 'pyproject.toml'}: unknown key 'selct' in [tool.bnaudit] (did you mean 'select'?) "
        "(known: select, ignore, extend-select, per-file-ignores, fail-on, data, batch-size, and a table per rule code)\n"
    )


def test_a_pyproject_table_in_bnaudit_toml_says_where_it_belongs(project):
    (project / "bnaudit.toml").write_text("[tool.bnaudit.bn205]\nresidual = 0.1\n")
    code, _, stderr = audit(project)
    assert (code, stderr) == (2, (
        f"bnaudit: error: {project / 'bnaudit.toml'}: a [tool.bnaudit] table belongs in pyproject.toml; "
        "here the keys and tables stand alone ([bn205], not [tool.bnaudit.bn205])\n"
    ))


def test_an_unknown_threshold_of_a_plugin_rule_is_an_error_too(project):
    (project / "pyproject.toml").write_text('[tool.bnaudit.th101]\nlimt = 1\n')
    code, _, stderr = audit(project, "-p", "plugin_th")
    assert (code, stderr) == (2, f"bnaudit: error: {project / 'pyproject.toml'}: [th101]: unknown threshold 'limt' (did you mean 'limit'?) (the thresholds of TH101: limit)\n")


@pytest.mark.parametrize(
    "table, message",
    [
        ({"select": ["BN9"]}, "select: BN9 matches no rule"),
        ({"per-file-ignores": {"*.h5": ["BN777"]}}, "per-file-ignores '*.h5': BN777 matches no rule"),
        ({"bn999": {"limit": 1}}, "[bn999]: there is no rule BN999"),
        ({"th101": {"limit": "many"}}, "th101.limit = 'many': expected a int like its default 100"),
        ({"th101": {"limit": True}}, "th101.limit = True: expected a int like its default 100"),
    ],
)
def test_unknown_codes_and_thresholds_are_named(tmp_path, table, message):
    threshold_rule = rule("TH101", "too-many-batchnorms", Severity.WARNING, settings={"limit": 100})(lambda ctx: [])
    rules = {**collect_rules(make_plugin_manager(autoload=False)), "TH101": threshold_rule}
    with pytest.raises(ConfigError) as raised:
        parse(table, tmp_path / "bnaudit.toml").validate(rules)
    assert str(raised.value).startswith(f"{tmp_path / 'bnaudit.toml'}: {message}")


@pytest.mark.parametrize(
    "table, message",
    [
        ({"fail-on": "loud"}, "fail-on: unknown severity 'loud'"),
        ({"batch-size": 0}, "batch-size must be a positive integer, not 0"),
        ({"batch-size": True}, "batch-size must be a positive integer, not True"),
        ({"select": "BN1"}, "select must be a list of rule codes or prefixes"),
        ({"per-file-ignores": ["x"]}, "per-file-ignores must be a table"),
        ({"data": {"*.keras": "missing.npz"}}, "data '*.keras': "),
        ({"BN101": 3}, "unknown key 'BN101'"),
    ],
)
def test_values_of_the_wrong_kind_are_refused(tmp_path, table, message):
    with pytest.raises(ConfigError) as raised:
        parse(table, tmp_path / "bnaudit.toml")
    assert str(raised.value).startswith(f"{tmp_path / 'bnaudit.toml'}: {message}")


def test_invalid_toml_and_a_missing_config_file_exit_2_with_one_line(project):
    (project / "bnaudit.toml").write_text("select = [BN1\n")
    code, _, stderr = audit(project)
    assert code == 2 and stderr.startswith(f"bnaudit: error: {project / 'bnaudit.toml'}: not valid TOML (") and stderr.count("\n") == 1
    code, _, stderr = audit(project, "--config", "nowhere.toml")
    assert (code, stderr) == (2, "bnaudit: error: --config nowhere.toml: no such file\n")
    code, _, stderr = audit(project, "--config", "bnaudit.toml", "--isolated")
    assert (code, stderr) == (2, "bnaudit: error: --config and --isolated contradict each other; give one\n")


def test_per_glob_data_and_batch_size_reach_each_models_options(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "vision.npz").write_bytes(b"")
    config = parse(
        {"data": {"models/vision/*.keras": "data/vision.npz", "other": "pkg.data:load"}, "batch-size": 16, "per-file-ignores": {"*.h5": ["BN2"]}},
        tmp_path / "pyproject.toml",
    )
    options = config.apply(AuditOptions(), given=set())
    assert options.runtime == RuntimeOptions(batch_size=16)
    vision = config.options_for(tmp_path / "models" / "vision" / "a.keras", options)
    assert vision.data == str(tmp_path / "data" / "vision.npz")
    assert config.options_for(tmp_path / "models" / "text" / "b.keras", options).data is None
    assert config.options_for(tmp_path / "other", options).data == "pkg.data:load"
    legacy = config.options_for(tmp_path / "models" / "old.h5", options)
    assert not legacy.selection.is_selected("BN201") and legacy.selection.is_selected("BN101")
    flagged = config.apply(AuditOptions(data="cli.npz", runtime=RuntimeOptions(batch_size=4)), given={"data", "batch_size"})
    assert config.options_for(tmp_path / "models" / "vision" / "a.keras", flagged).data == "cli.npz"
    assert flagged.runtime == RuntimeOptions(batch_size=4)


def test_search_stops_at_the_nearest_file(tmp_path):
    (tmp_path / "bnaudit.toml").write_text('fail-on = "warning"\n')
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "pyproject.toml").write_text('[tool.bnaudit]\nfail-on = "info"\n')
    found = find(tmp_path / "a")
    assert found == (tmp_path / "a" / "pyproject.toml", {"fail-on": "info"})
    assert load(start=tmp_path).fail_on == Severity.WARNING
    assert load(start=tmp_path, isolated=True).source is None


def test_codes_and_prefixes_of_loaded_rules_pass_validation(tmp_path):
    rules = collect_rules(make_plugin_manager(autoload=False))
    parse({"select": ["BN1", "BN201"], "ignore": ["BN5"], "per-file-ignores": {"*.h5": ["BN2"]}}, tmp_path / "bnaudit.toml").validate(rules)
