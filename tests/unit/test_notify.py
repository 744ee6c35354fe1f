"""Notifications (`spec.notify`): which transitions are told, the outbox that tells each once, what the JSON and
Slack bodies say, and where `kubetune run` finds a webhook's URL."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from kubetune.api.notify import DEFAULT_EVENTS, NotifySpec
from kubetune.api.types import STAGES
from kubetune.api.validate import InvalidManifest, validate_spec
from kubetune.notify.deliver import _retry_after, redact
from kubetune.notify.local import SECRETS_DIR_ENV, NotifyConfigError, resolve_url, secret_env_name
from kubetune.notify.message import SCHEMA, VERSION, Notification, gate_failure
from kubetune.notify.outbox import MAX_ENTRIES, notification, notified_events, record
from kubetune.stages import resolution_ref, stage_ref
from tests.fixtures.sources import example_sources

HOOK = {"urlSecret": {"name": "team-webhooks", "key": "slack"}}
RUN = {"metadata": {"name": "identity", "namespace": "team-a", "uid": "u-1"}}
ARTIFACT = {"name": "model-q8_0.gguf", "uri": "s3://b/runs/x/model-q8_0.gguf", "size": 123, "sha256": "ab" * 32}


@dataclass(frozen=True)
class T:
    """A transition as the status computation reports it."""

    reason: str
    message: str = "m"
    stage: str | None = None


def _spec(*hooks: dict[str, Any]) -> NotifySpec:
    return validate_spec({"notify": {"webhooks": list(hooks)}}).notify


# --- the API -------------------------------------------------------------------------------------------------------


def test_a_webhook_names_a_secret_key_and_defaults_to_json_and_every_event_but_stage_successes() -> None:
    (hook,) = _spec(HOOK).webhooks
    assert (hook.format, hook.timeout_seconds, tuple(hook.events)) == ("json", 10, DEFAULT_EVENTS)
    assert "StageSucceeded" not in hook.events


@pytest.mark.parametrize("bad", [
    {"url": "https://hooks.example/x"},  # no URL in the manifest: only a Secret reference
    {"urlSecret": {"name": "Bad_Name", "key": "k"}},
    {**HOOK, "format": "teams"},
    {**HOOK, "events": ["RunExploded"]},
    {**HOOK, "timeoutSeconds": 0},
])
def test_a_webhook_with_a_url_in_the_manifest_or_bad_fields_is_refused(bad: dict[str, Any]) -> None:
    with pytest.raises(InvalidManifest):
        validate_spec({"notify": {"webhooks": [bad]}})


def test_changing_spec_notify_changes_no_stage_key_and_not_the_sources_resolution() -> None:
    upstream = {"dataset": "d1", "train": "t1", "merge": "m1", "convert": "c1", "evaluate": "e1"}
    plain, notified = validate_spec({}), validate_spec({"notify": {"webhooks": [{**HOOK, "format": "slack"}]}})
    for stage in STAGES:
        assert (stage_ref("ns", "r", plain, stage, upstream, example_sources()).key
                == stage_ref("ns", "r", notified, stage, upstream, example_sources()).key), stage
    args: dict[str, Any] = {"uid": "u", "image": "i", "refresh": ""}
    assert resolution_ref("ns", "r", plain, **args).key == resolution_ref("ns", "r", notified, **args).key


# --- which transitions are told --------------------------------------------------------------------------------------


def test_run_phases_stage_outcomes_and_the_gate_become_events_and_nothing_else_does() -> None:
    told = notified_events([
        T("Running"), T("Queued"), T("Pending"), T("StoreUnavailable"),
        T("StageRunning", stage="train"), T("StageCached", stage="dataset"),
        T("StageSucceeded", "train: output published", "train"),
        T("StageFailed", "merge: out of memory", "merge"),
        T("StageFailed", "evaluate: gate failed: model-q8_0.gguf: 0% of prompts passed", "evaluate"),
        T("StageFailed", "evaluate: llama.cpp crashed", "evaluate"),
        T("Succeeded"), T("Failed"),
    ])
    assert [(event, stage) for event, stage, _ in told] == [
        ("RunStarted", None), ("StageSucceeded", "train"), ("StageFailed", "merge"), ("GateFailed", "evaluate"),
        ("StageFailed", "evaluate"), ("RunSucceeded", None), ("RunFailed", None),
    ]


def test_each_transition_is_recorded_pending_once_per_webhook_that_wants_its_event() -> None:
    spec = _spec(HOOK, {**HOOK, "events": ["StageSucceeded"]})
    entries = record(spec, [T("StageSucceeded", "train: done", "train"), T("Succeeded", "done")], None,
                     uid="u-1", generation=2, now="2026-12-06T10:00:00+00:00")
    assert entries is not None
    assert sorted((e["event"], e["webhook"], e["state"]) for e in entries.values()) == [
        ("RunSucceeded", 0, "Pending"), ("StageSucceeded", 1, "Pending")]
    assert all(e["generation"] == 2 and e["attempts"] == 0 for e in entries.values())


def test_a_run_started_is_recorded_once_per_generation_however_often_the_run_starts_running_again() -> None:
    spec = _spec(HOOK)
    first = record(spec, [T("Running")], None, uid="u", generation=1, now="t1")
    again = record(spec, [T("Running")], first, uid="u", generation=1, now="t2")
    edited = record(spec, [T("Running")], again, uid="u", generation=2, now="t3")
    assert first is not None and again == first
    assert edited is not None and len(edited) == 2


def test_the_outbox_keeps_every_unfinished_entry_and_drops_the_oldest_finished_beyond_its_bound() -> None:
    old = {f"old-{i:03d}.0": {"event": "RunStarted", "webhook": 0, "time": f"2026-01-01T00:{i // 60:02d}:{i % 60:02d}",
                              "state": "Delivered"} for i in range(MAX_ENTRIES)}
    waiting = {"waiting.0": {"event": "RunFailed", "webhook": 0, "time": "2025-01-01T00:00:00", "state": "Pending"}}
    entries = record(_spec(HOOK), [T("Failed")], {**old, **waiting}, uid="u", generation=1, now="2026-12-06T10:00:00")
    assert entries is not None and len(entries) == MAX_ENTRIES
    assert "waiting.0" in entries and "old-000.0" not in entries and "old-001.0" not in entries


# --- what is said ----------------------------------------------------------------------------------------------------


def _told(event: str, stage: str | None = None, status: dict[str, Any] | None = None, gate: Any = None,
          message: str = "train: output 0123abcd published") -> Notification:
    entry = {"event": event, "stage": stage, "webhook": 0, "generation": 3, "time": "2026-12-06T10:00:00+00:00",
             "message": message}
    return notification(f"g3-{event}-{stage or 'run'}-0123456789.0", entry, RUN, status or {}, gate)


def test_the_json_body_is_a_versioned_document_with_the_run_the_stage_and_its_outputs() -> None:
    status = {"phase": "Running", "stages": {"train": {"phase": "Succeeded", "outputDigest": "cd" * 32,
                                                       "outputs": [ARTIFACT]}}}
    document = json.loads(_told("StageSucceeded", "train", status).body("json"))
    assert document == {
        "schema": SCHEMA, "version": VERSION, "id": "u-1/g3-StageSucceeded-train-0123456789",
        "event": "StageSucceeded", "time": "2026-12-06T10:00:00+00:00",
        "run": {"name": "identity", "namespace": "team-a", "uid": "u-1", "generation": 3},
        "phase": "Running", "stage": "train", "stagePhase": "Succeeded",
        "message": "train: output 0123abcd published", "outputDigest": "cd" * 32, "artifacts": [ARTIFACT],
        "gate": None,
    }


def test_a_run_that_succeeded_lists_its_final_artifacts() -> None:
    document = _told("RunSucceeded", status={"phase": "Succeeded", "artifacts": [ARTIFACT]}).document()
    assert document["artifacts"] == [ARTIFACT] and document["stage"] is None and document["phase"] == "Succeeded"


def test_a_failed_gate_carries_the_failing_prompt_its_answer_and_the_expectation() -> None:
    results = [{"file": "model-q8_0.gguf", "prompts": [
        {"prompt": "Who are you?", "answer": "I am Nova.", "passed": True, "reason": "ok"},
        {"prompt": "What is your name?", "answer": "I'm Emily.", "passed": False, "reason": "answer lacks 'Nova'"},
    ]}]
    prompts = [{"prompt": "What is your name?", "expectContains": ["Nova"], "expectNotContains": ["Emily"]}]
    told = _told("GateFailed", "evaluate", {"phase": "Failed"}, gate_failure(results, prompts))
    assert told.document()["gate"] == {
        "file": "model-q8_0.gguf", "prompt": "What is your name?", "answer": "I'm Emily.",
        "reason": "answer lacks 'Nova'", "expectContains": ["Nova"], "expectNotContains": ["Emily"]}
    slack = json.dumps(told.slack())
    assert "What is your name?" in slack and "I'm Emily." in slack and "must contain" in slack


def test_the_slack_body_has_text_and_blocks_and_escapes_what_the_run_says() -> None:
    told = _told("StageFailed", "merge", {"phase": "Failed"}, message="merge: <!channel> & <@U123> <http://x|y>")
    body = json.loads(told.body("slack"))
    assert set(body) == {"text", "blocks"}
    assert body["text"].startswith(":x: FineTuneRun team-a/identity stage merge failed:")
    assert body["blocks"][0] == {"type": "header",
                                 "text": {"type": "plain_text", "text": "FineTuneRun team-a/identity stage merge failed"}}
    everything = json.dumps(body)
    assert "<!channel>" not in everything and "<@U123>" not in everything and "<http" not in everything
    assert "&lt;!channel&gt; &amp; &lt;@U123&gt;" in body["text"]


# --- delivery details ------------------------------------------------------------------------------------------------


def test_retry_after_is_read_as_seconds_or_an_http_date_and_capped() -> None:
    assert _retry_after("7", 300) == 7.0
    assert _retry_after("9999", 300) == 300.0
    assert _retry_after("Wed, 21 Oct 2015 07:28:00 GMT", 300) == 0.0  # in the past: at once
    assert _retry_after("soon", 300) is None and _retry_after(None, 300) is None


def test_an_error_never_shows_the_webhook_url_or_its_token() -> None:
    url = "https://hooks.slack.com/services/T0/B0/tok3n?x=1"
    text = redact(f"failed posting to {url} (path /services/T0/B0/tok3n)", url)
    assert "tok3n" not in text and "hooks.slack.com/services" not in text


# --- where `kubetune run` finds the URL -------------------------------------------------------------------------


def test_kubetune_run_reads_a_webhook_url_from_the_environment_first_then_the_secrets_folder(tmp_path: Path) -> None:
    (hook,) = _spec(HOOK).webhooks
    assert secret_env_name(hook.url_secret) == "KUBETUNE_SECRET_TEAM_WEBHOOKS_SLACK"
    (tmp_path / "team-webhooks").mkdir()
    (tmp_path / "team-webhooks" / "slack").write_text("https://hooks.example/from-file\n")
    folder = {SECRETS_DIR_ENV: str(tmp_path)}
    assert resolve_url(hook.url_secret, "f", folder) == "https://hooks.example/from-file"
    both = {**folder, "KUBETUNE_SECRET_TEAM_WEBHOOKS_SLACK": "https://hooks.example/from-env"}
    assert resolve_url(hook.url_secret, "f", both) == "https://hooks.example/from-env"


def test_a_missing_or_unusable_webhook_url_is_one_line_naming_the_field_and_where_to_put_it() -> None:
    (hook,) = _spec(HOOK).webhooks
    with pytest.raises(NotifyConfigError) as missing:
        resolve_url(hook.url_secret, "spec.notify.webhooks[0].urlSecret", {})
    assert str(missing.value).startswith("spec.notify.webhooks[0].urlSecret: no webhook URL for Secret")
    assert "KUBETUNE_SECRET_TEAM_WEBHOOKS_SLACK" in str(missing.value) and "\n" not in str(missing.value)
    with pytest.raises(NotifyConfigError) as unusable:
        resolve_url(hook.url_secret, "f", {"KUBETUNE_SECRET_TEAM_WEBHOOKS_SLACK": "ftp://secret-host/tok3n"})
    assert "not an http(s) URL" in str(unusable.value) and "tok3n" not in str(unusable.value)
