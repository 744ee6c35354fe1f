"""The Argo CD health check (deploy/argocd/finetunerun-health.lua) maps a FineTuneRun's status to Argo CD health.

The Lua runs in a real interpreter (Debian's lua5.4; Argo CD itself embeds gopher-lua, Lua 5.1, so the script sticks
to the common subset) on sample objects whose status is built with the API's own status model.
"""

from __future__ import annotations

import math
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from kubetune.api import run_status as rs
from kubetune.api import types as t

ROOT = Path(__file__).resolve().parents[2]
HEALTH_LUA = ROOT / "deploy" / "argocd" / "finetunerun-health.lua"
ARGOCD_CM = ROOT / "deploy" / "argocd" / "argocd-cm.yaml"
HEALTH_KEY = "resource.customizations.health.kubetune.dev_FineTuneRun"
NOW = "2025-11-25T12:00:00Z"


def lua_literal(value: Any) -> str:
    """A Lua expression for a JSON-like Python value (None → nil, lists → 1-based sequences)."""
    if value is None:
        return "nil"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{value} has no JSON form")
        return repr(value)
    if isinstance(value, str):
        # Decimal byte escapes keep every byte (UTF-8 included) exact in a Lua string literal.
        return '"' + "".join(
            chr(b) if 0x20 <= b < 0x7F and chr(b) not in '"\\' else f"\\{b:03d}" for b in value.encode()
        ) + '"'
    if isinstance(value, list):
        return "{" + ", ".join(lua_literal(item) for item in value) + "}"
    if isinstance(value, dict):
        return "{" + ", ".join(f"[{lua_literal(str(k))}] = {lua_literal(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"no Lua literal for {type(value).__name__}")


def lua_interpreter() -> str:
    found = shutil.which("lua5.4")
    if found is None:
        pytest.fail("lua5.4 is not installed: apt-get install -y lua5.4 (scripts/test.sh needs it in CI)")
    return found


def run_health_check(obj: dict[str, Any], script: Path = HEALTH_LUA) -> tuple[str, str]:
    """Runs the health script the way Argo CD does (global `obj`, the chunk returns {status, message})."""
    harness = (
        f"obj = {lua_literal(obj)}\n"
        f"local check = assert(loadfile({lua_literal(str(script))}))\n"
        "local hs = check()\n"
        "io.write(hs.status, '\\n', hs.message or '')\n"
    )
    done = subprocess.run([lua_interpreter(), "-"], check=False, input=harness, capture_output=True, text=True,
                          timeout=30)
    assert done.returncode == 0, done.stderr
    status, _, message = done.stdout.partition("\n")
    return status, message


def condition(kind: str, value: str, reason: str, message: str = "", generation: int = 1) -> rs.Condition:
    return rs.Condition(type=kind, status=value, reason=reason, message=message,
                       last_transition_time=NOW, observed_generation=generation)


def conditions(phase: rs.RunPhase, message: str = "", generation: int = 1) -> list[rs.Condition]:
    """The three conditions as the operator writes them for `phase`."""
    active = phase in ("Pending", "Queued", "Running")
    return [
        condition("Ready", "True" if phase == "Succeeded" else "False", phase, message, generation),
        condition("Progressing", "True" if active else "False", f"Stage{phase}" if active else phase, message,
                  generation),
        condition("Failed", "True" if phase == "Failed" else "False", "StageFailed" if phase == "Failed" else phase,
                  message if phase == "Failed" else "", generation),
    ]


def run_object(status: rs.FineTuneRunStatus | None, *, generation: int = 1, suspend: bool = False) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "apiVersion": t.API_VERSION,
        "kind": t.KIND,
        "metadata": {"name": "nova", "namespace": "ml-team", "generation": generation, "uid": "0b5e…"},
        "spec": t.FineTuneRunSpec(suspend=suspend).to_manifest(),
    }
    if status is not None:
        obj["status"] = status.to_manifest()
    return obj


def status(phase: rs.RunPhase, *, stage: t.Stage | None = "train", message: str | None = None,
           progress_text: str | None = None, generation: int = 1) -> rs.FineTuneRunStatus:
    return rs.FineTuneRunStatus(phase=phase, observed_generation=generation, current_stage=stage,
                               progress_text=progress_text, message=message,
                               conditions=conditions(phase, message or "", generation))


GGUF = rs.Artifact(name="model-q4_k_m.gguf", uri="s3://kubetune-artifacts/runs/ml-team/nova/convert/0123/model.gguf",
                  size=105_000_000, sha256="ab" * 32)

CASES: list[tuple[str, dict[str, Any], str, str]] = [
    ("no status: the operator never saw it", run_object(None), "Missing", "has not observed this run"),
    ("empty status", {**run_object(None), "status": {}}, "Missing", "has not observed this run"),
    ("Pending", run_object(status("Pending", stage="dataset", progress_text="dataset pending")),
     "Progressing", "dataset pending"),
    ("Queued by Kueue", run_object(status("Queued", progress_text="train queued")), "Progressing", "train queued"),
    ("Running with training progress",
     run_object(status("Running", progress_text="train 120/400 (30%)")), "Progressing", "train 120/400 (30%)"),
    ("Running, message wins over progress text",
     run_object(status("Running", message="spec changed: applied after stage train", progress_text="train running")),
     "Progressing", "spec changed: applied after stage train"),
    ("Succeeded",
     run_object(rs.FineTuneRunStatus(phase="Succeeded", observed_generation=1, current_stage="evaluate",
                                    progress_text="done (5 stages)", conditions=conditions("Succeeded"),
                                    artifacts=[GGUF])),
     "Healthy", "done (5 stages)"),
    ("Failed", run_object(status("Failed", stage="convert", message="stage convert failed: out of disk")),
     "Degraded", "stage convert failed: out of disk"),
    ("Failed condition True outranks the phase",
     run_object(rs.FineTuneRunStatus(phase="Running", observed_generation=1,
                                    conditions=[condition("Failed", "True", "StageFailed", "train: CUDA error")])),
     "Degraded", "train: CUDA error"),
    ("Suspended", run_object(status("Suspended", message="suspended (spec.suspend: true)"), suspend=True),
     "Suspended", "suspended (spec.suspend: true)"),
    ("Stalled: pods cannot be created",
     run_object(rs.FineTuneRunStatus(
         phase="Running", observed_generation=1, current_stage="train", message="stage train: Job x cannot create "
         "its pods", conditions=[*conditions("Running", "stage train: Job x cannot create its pods"),
                                 condition("Stalled", "True", "PodsNotCreated", "stage train: Job x cannot create its "
                                           "pods")])),
     "Degraded", "Stalled (PodsNotCreated): stage train: Job x cannot create its pods"),
    ("not stalled", run_object(rs.FineTuneRunStatus(
        phase="Running", observed_generation=1, progress_text="train running",
        conditions=[*conditions("Running"), condition("Stalled", "False", "NotStalled", "")])),
     "Progressing", "train running"),
    ("suspend requested, stage still stopping",
     run_object(status("Running", progress_text="train running"), suspend=True), "Progressing",
     "Suspending: train running"),
    ("spec edited, operator not caught up (stale Succeeded)",
     run_object(status("Succeeded", stage="evaluate", generation=2), generation=3),
     "Progressing", "observe generation 3"),
    ("spec edited, stale Failed is not Degraded yet",
     run_object(status("Failed", message="stage train failed", generation=1), generation=2),
     "Progressing", "observe generation 2"),
    ("status written before observedGeneration existed",
     {**run_object(None), "status": {"phase": "Running"}}, "Progressing", "observe generation 1"),
    ("a phase this check does not know",
     {**run_object(None), "status": {"phase": "Archived", "observedGeneration": 1}}, "Unknown", "Archived"),
]


@pytest.mark.parametrize(("obj", "health", "message"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_health_of_each_phase(obj: dict[str, Any], health: str, message: str) -> None:
    if "status" in obj and obj["status"].get("conditions"):
        rs.FineTuneRunStatus.model_validate(obj["status"])  # samples are real statuses, not free-form dicts
    got_health, got_message = run_health_check(obj)
    assert (got_health, message in got_message) == (health, True), got_message


def test_every_argo_cd_health_status_is_reachable() -> None:
    assert {c[2] for c in CASES} == {"Healthy", "Progressing", "Degraded", "Suspended", "Missing", "Unknown"}


def test_every_run_phase_has_a_case() -> None:
    phases = {c[1].get("status", {}).get("phase") for c in CASES}
    assert set(rs.RunPhase.__args__) <= phases  # type: ignore[attr-defined]


def test_lua_literal_round_trips_through_the_interpreter(tmp_path: Path) -> None:
    value = {"a": [1, 2.5, True, False], "quote\"back\\slash": "ünï\tcode", "nested": {"empty": []}}
    script = tmp_path / "echo.lua"
    script.write_text(
        "local function dump(v)\n"
        "  if type(v) ~= 'table' then return type(v) .. ':' .. tostring(v) end\n"
        "  local keys = {}\n"
        "  for k in pairs(v) do keys[#keys + 1] = tostring(k) end\n"
        "  table.sort(keys)\n"
        "  return '{' .. table.concat(keys, ',') .. '}'\n"
        "end\n"
        "return {status = dump(obj['quote\"back\\\\slash']), message = dump(obj.a[2]) .. ' ' .. dump(obj.nested)}\n"
    )
    assert run_health_check(value, script) == ("string:ünï\tcode", "number:2.5 {empty}")


def test_argocd_cm_embeds_the_script_verbatim() -> None:
    config_map = yaml.safe_load(ARGOCD_CM.read_text())
    assert (config_map["apiVersion"], config_map["kind"], config_map["metadata"]["name"]) == ("v1", "ConfigMap",
                                                                                               "argocd-cm")
    assert config_map["data"][HEALTH_KEY] == HEALTH_LUA.read_text()


def test_health_key_names_the_crd_group_and_kind() -> None:
    crd = yaml.safe_load((ROOT / "crds" / "kubetune.dev_finetuneruns.yaml").read_text())
    assert HEALTH_KEY == f"resource.customizations.health.{crd['spec']['group']}_{crd['spec']['names']['kind']}"
