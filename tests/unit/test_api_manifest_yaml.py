"""Manifest files read as kubectl and the API server read them, so `kubetune validate` agrees with the server."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from kubetune.api.validate import FineTuneRun, InvalidManifest, load_runs

ROOT = Path(__file__).resolve().parents[2]
HEADER = "apiVersion: kubetune.dev/v1alpha1\nkind: FineTuneRun\nmetadata: {name: demo}\n"


def refused(tmp_path: Path, text: str, name: str = "run.yaml") -> InvalidManifest:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    with pytest.raises(InvalidManifest) as raised:
        load_runs(path)
    return raised.value


def accepted(tmp_path: Path, text: str, name: str = "run.yaml") -> list[FineTuneRun]:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return load_runs(path)


def test_a_duplicate_key_is_refused_with_the_file_and_line_of_the_repeat(tmp_path: Path) -> None:
    error = refused(tmp_path, HEADER + "spec:\n  training:\n    epochs: 1\n    epochs: 2\n")
    assert error.source == f"{tmp_path / 'run.yaml'}:7"
    assert [str(e) for e in error.errors] == [
        "duplicate key 'epochs' (first at line 6): kubectl would silently send only the last value; write the key once"]


def test_a_duplicate_key_in_a_json_manifest_is_refused(tmp_path: Path) -> None:
    text = ('{"apiVersion": "kubetune.dev/v1alpha1", "kind": "FineTuneRun", "metadata": {"name": "a"}, '
            '"spec": {}, "spec": {}}')
    assert "duplicate key 'spec'" in str(refused(tmp_path, text, "run.json").errors[0])


def test_a_merge_key_may_be_overridden_as_kubectl_allows(tmp_path: Path) -> None:
    text = HEADER + "spec:\n  training:\n    <<: {epochs: 1, seed: 3}\n    epochs: 2\n"
    (run,) = accepted(tmp_path, text)
    assert run.spec.training.epochs == 2 and run.spec.training.seed == 3


def test_whole_floats_are_integers_as_json_writes_them(tmp_path: Path) -> None:
    (run,) = accepted(tmp_path, HEADER + "spec: {training: {batchSize: 4.0, epochs: 2, learningRate: 1e-4}}\n")
    assert run.spec.training.batch_size == 4 and run.spec.training.epochs == 2.0


def test_yaml_scalars_resolve_as_go_yaml_resolves_them(tmp_path: Path) -> None:
    # y/n are booleans for go-yaml v2 (a type error for a string field); dates and 1:30 stay strings.
    error = refused(tmp_path, HEADER + "spec: {dataset: {placeholders: {NAME: y}}}\n")
    assert [str(e) for e in error.errors] == ["spec.dataset.placeholders.NAME: must be a string"]
    (run,) = accepted(tmp_path, HEADER + "spec: {dataset: {placeholders: {DATE: 2024-01-31, TIME: 1:30, EQ: =}}}\n")
    assert run.spec.dataset.placeholders == {"DATE": "2024-01-31", "TIME": "1:30", "EQ": "="}
    (run,) = accepted(tmp_path, HEADER + "spec: {suspend: y}\n")
    assert run.spec.suspend is True


def test_null_fields_are_unset_as_the_server_prunes_them(tmp_path: Path) -> None:
    (run,) = accepted(tmp_path, HEADER + "spec:\n  training: null\n  export: {types: null}\n  storage: {uri: ~}\n")
    assert run.spec.training.method == "qlora" and run.spec.export.types == ["q8_0"]


@pytest.mark.parametrize(("text", "says"), [
    (HEADER + "spec: {training: {epochs: .nan}}\n", "spec.training.epochs: nan is not a JSON number"),
    (HEADER + "spec: {training: {epochs: .inf}}\n", "spec.training.epochs: inf is not a JSON number"),
    # libyaml refuses the escape itself, with its line, as go-yaml (a port of libyaml) does.
    (HEADER + 'spec: {dataset: {placeholders: {NAME: "\\ud800"}}}\n',
     "invalid Unicode character escape code" if yaml.__with_libyaml__ else "lone surrogate"),
    (HEADER + "spec: " + "[" * 300 + "]" * 300 + "\n", "nested deeper than"),
    (HEADER + "spec: {training: {seed: " + "9" * 5000 + "}}\n", "not valid YAML"),
    (HEADER + "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 10)}]\n" for i in range(6)),
     "excessive aliasing"),
    ("spec: [unclosed\n", "not valid YAML"),
    ("{\"apiVersion\": ", "not valid JSON"),
], ids=["nan", "inf", "lone surrogate", "deep nesting", "huge integer", "alias bomb", "broken yaml", "broken json"])
def test_documents_the_server_cannot_read_are_one_error_line(tmp_path: Path, text: str, says: str) -> None:
    error = refused(tmp_path, text)
    assert len(error.errors) == 1 and says in str(error.errors[0]) and "\n" not in str(error.errors[0])


def test_a_lone_surrogate_in_json_becomes_the_replacement_character_as_in_go(tmp_path: Path) -> None:
    text = ('{"apiVersion": "kubetune.dev/v1alpha1", "kind": "FineTuneRun", "metadata": {"name": "a"}, '
            '"spec": {"dataset": {"placeholders": {"NAME": "x\\ud800"}}}}')
    (run,) = accepted(tmp_path, text, "run.json")
    assert run.spec.dataset.placeholders == {"NAME": "x\ufffd"}


def test_non_string_keys_are_unknown_fields_not_a_crash(tmp_path: Path) -> None:
    error = refused(tmp_path, HEADER + "2: a\ntrue: b\n~: c\nspec: {3.5: x, training: {7: y}}\n")
    assert {str(e) for e in error.errors} == {
        "2: unknown field", "true: unknown field", "null: unknown field", "spec.3.5: unknown field",
        "spec.training.7: unknown field"}


def test_an_unknown_status_field_is_refused_as_strict_decoding_refuses_it(tmp_path: Path) -> None:
    error = refused(tmp_path, HEADER + "status: {phase: Running, colour: red}\n")
    assert [str(e) for e in error.errors] == ["status.colour: unknown field"]


def test_a_key_with_a_newline_is_reported_on_one_line(tmp_path: Path) -> None:
    error = refused(tmp_path, HEADER + 'spec: {"a\\nb": 1}\n')
    assert [str(e) for e in error.errors] == ["spec.a\\nb: unknown field"]


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no named pipes here")
def test_a_named_pipe_is_refused_without_reading_it(tmp_path: Path) -> None:
    pipe = tmp_path / "run.yaml"
    os.mkfifo(pipe)
    with pytest.raises(InvalidManifest, match="not a regular file"):
        load_runs(pipe)


def test_validate_prints_any_character_and_exits_1_without_a_traceback(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(HEADER.replace("demo", '"d\\u00e9mo\\u2028"') + 'spec: {"\\u00e9\\t": 1}\n', encoding="utf-8")
    env = {**os.environ, "PYTHONIOENCODING": "ascii"}
    result = subprocess.run([sys.executable, "-m", "kubetune.cli", "validate", str(bad)], capture_output=True,
                            text=True, cwd=ROOT, env=env, check=False)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert f"{bad}: spec.\\xe9\\t: unknown field" in result.stderr.splitlines()
