"""`python -m kubetune.jobs STAGE --run FILE` on hostile run configs: stage prefixes that leave the store (`..`, an
absolute path, no text), stores, metadata and resolved sources of the wrong type, unknown stages. Each is refused in
one line naming the field with exit 2 (never retried) before the stage starts or its store is opened — a bad prefix
used to fail the stage with a traceback and exit 1 (retried), after writing a progress object under whatever it
named."""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kubetune.api.validate import validate_spec
from kubetune.jobs.runtime import JobContext, run_job
from kubetune.runconfig import RunConfig, StoreConfig
from kubetune.sources import ResolvedSource, Sources
from kubetune.stages import StageRef
from kubetune.store.keys import TEMP_MARKER
from tests.property.test_dataset_hostile import hang_guard, scratch

non_strings = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.lists(st.integers(), max_size=2),
                        st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))
non_objects = non_strings.filter(lambda value: not isinstance(value, dict))
bad_prefixes = st.one_of(non_strings, st.sampled_from(
    ["", "/", "/etc", "../escape", "default/../../escape", "a//b", "./a", "a/./b", "a\\b", "a\x00b", "a\nb",
     f"a/{TEMP_MARKER}x", "a" * 1100]))
bad_store_uris = st.one_of(non_strings, st.sampled_from(
    ["", "file:///tmp/%2e%2e/escape", "file://host/x", "file:relative", "s3://bad bucket/x", "s3://bucket/../x",
     "ftp://x/y", "s3://b/x?versionId=1", "s3://[x/y"]))
FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "stages.dataset.prefix": bad_prefixes,
    "stages.dataset.key": st.one_of(non_strings, st.just("")),
    "stages.dataset": non_objects,
    "stages": st.one_of(non_objects, st.just({"bogus": {"key": "f" * 64, "prefix": "a/b"}})),
    "store.uri": bad_store_uris,
    "store.endpoint": st.one_of(st.integers(), st.lists(st.text(max_size=3), max_size=2), st.just("http://x:9000")),
    "store.pathStyle": st.one_of(st.integers(), st.text(max_size=3), st.none()),
    "store": non_objects,
    "metadata.name": st.one_of(non_strings, st.just("")),
    "metadata.namespace": st.one_of(non_strings, st.just("")),
    "metadata": non_objects,
    "sources": non_objects,
    "sources.dataset": st.one_of(non_objects, st.just({"uri": 5, "digest": "f" * 64})),
    "sources.baseModel.digest": st.one_of(non_strings, st.sampled_from(["", "F" * 64, "f" * 63, "../" + "f" * 61])),
}

NAMED_AS = {"store.uri": ("store.uri", "store URI"), "store.endpoint": ("store.endpoint", "S3 endpoint")}


def valid_run_config(store: Path) -> dict[str, Any]:
    spec = validate_spec({"dataset": {"uri": str(store.parent / "ds"), "tokenStats": False}})
    ref = StageRef("f" * 64, "default/hostile/dataset/" + "f" * 16)
    sources = Sources(*(ResolvedSource(uri, "f" * 64) for uri in (str(store.parent / "ds"), "base", "bundled://m")))
    return RunConfig("hostile", "default", spec, StoreConfig(str(store)), {"dataset": ref}, sources=sources).to_json()


def put(doc: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, last = dotted.split(".")
    for name in parents:
        doc = doc[name]
    doc[last] = value


def never_runs(_ctx: JobContext) -> None:
    raise AssertionError("the stage ran on a run config it should refuse")


@given(st.lists(st.sampled_from(sorted(FIELDS)), min_size=1, max_size=3, unique=True).flatmap(
    lambda fields: st.tuples(*(st.tuples(st.just(name), FIELDS[name]) for name in fields))))
def test_any_hostile_run_config_is_refused_in_one_line_with_exit_2_before_the_store_is_touched(
        changes: tuple[tuple[str, Any], ...]) -> None:
    with scratch() as root:
        doc = valid_run_config(root / "store")
        for name, value in sorted(changes, key=lambda change: change[0]):  # a parent replaced first: its value stands
            with contextlib.suppress(TypeError, KeyError):
                put(doc, name, value)
        (root / "run.json").write_text(json.dumps(doc), encoding="utf-8")
        err = io.StringIO()
        with contextlib.redirect_stderr(err), hang_guard():
            code = run_job("dataset", root / "run.json", never_runs)
        lines = err.getvalue().splitlines()
        assert code == 2 and len(lines) == 1, lines
        assert lines[0].startswith("kubetune-job: failed: ")
        # The line names a field it was given wrong (the store's own words for a URI or endpoint it cannot use).
        assert any(word in lines[0] for name, _ in changes for word in NAMED_AS.get(name, (name,))), (changes, lines)
        assert not (root / "store").exists(), "a refused run config opened its store"


def test_a_stage_prefix_out_of_the_store_fails_the_entrypoint_with_exit_2_and_writes_nothing(tmp_path: Path) -> None:
    doc = valid_run_config(tmp_path / "store")
    doc["stages"]["dataset"]["prefix"] = "../escape"
    (tmp_path / "run.json").write_text(json.dumps(doc), encoding="utf-8")
    done = subprocess.run([sys.executable, "-P", "-m", "kubetune.jobs", "dataset", "--run", str(tmp_path / "run.json")],
                          capture_output=True, text=True, timeout=120, check=False,
                          env=dict(os.environ, KUBETUNE_WORKDIR=str(tmp_path / "work")))
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    [line] = done.stderr.strip().splitlines()
    assert line.startswith("kubetune-job: failed: run config ") and "stages.dataset.prefix" in line
    assert not (tmp_path / "store").exists() and not (tmp_path / "escape").exists()


@pytest.mark.parametrize("where", ["store", "KUBETUNE_WORKDIR"])
def test_a_store_or_scratch_folder_that_is_a_file_is_one_line_and_exit_2(
        where: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "file").write_text("in the way", encoding="utf-8")
    doc = valid_run_config(tmp_path / ("file" if where == "store" else "store"))
    (tmp_path / "run.json").write_text(json.dumps(doc), encoding="utf-8")
    monkeypatch.setenv("KUBETUNE_WORKDIR", str(tmp_path / ("file" if where == "KUBETUNE_WORKDIR" else "work")))
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = run_job("dataset", tmp_path / "run.json", never_runs)
    [line] = err.getvalue().splitlines()
    assert code == 2 and line.startswith("kubetune-job: failed: ") and str(tmp_path / "file") in line, line
    assert (tmp_path / "file").read_text(encoding="utf-8") == "in the way"
