"""`kubetune status RUN`: a run's status printed the way `kubectl get ftr -o wide` and `kubectl describe` show it."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kubetune.api.crd import PRINTER_COLUMNS
from kubetune.progress_view import format_duration
from kubetune.state_files import read_state_json

STATE_DIR = Path(".kubetune")


def status_path(name: str, namespace: str = "default", state_dir: Path = STATE_DIR) -> Path:
    return state_dir / "runs" / namespace / name / "status.json"


def load_status(name: str, namespace: str = "default", state_dir: Path = STATE_DIR) -> dict[str, Any]:
    """The run's status.json; StateFileError (an OSError) naming it when it is no file kubetune run wrote."""
    path = status_path(name, namespace, state_dir)
    try:
        document: dict[str, Any] = read_state_json(path, state_dir)
    except FileNotFoundError:
        raise FileNotFoundError(f"no local run {namespace}/{name} (looked for {path}); start it with "
                                "`kubetune run`") from None
    return document


def _json_path(document: dict[str, Any], path: str) -> Any:
    node: Any = document
    for part in path.strip(".").split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


def _age(timestamp: str | None, now: datetime) -> str:
    if not timestamp:
        return "<unknown>"
    then = datetime.strptime(timestamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    return format_duration((now - then).total_seconds())


def render_get(document: dict[str, Any], now: datetime | None = None) -> str:
    """One table row per run, with the CRD's printer columns (wide: all of them)."""
    now = now or datetime.now(UTC)
    headers = ["NAME"] + [c["name"].upper() for c in PRINTER_COLUMNS]
    row = [document["metadata"]["name"]]
    for column in PRINTER_COLUMNS:
        value = _json_path(document, column["jsonPath"])
        if column["type"] == "date":
            row.append(_age(value, now))
        elif column["type"] == "number" and isinstance(value, (int, float)):
            row.append(f"{value:.4g}")
        else:
            row.append("" if value is None else str(value))
    widths = [max(len(h), len(v)) for h, v in zip(headers, row, strict=True)]
    line = "   ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()
    values = "   ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip()
    return f"{line}\n{values}\n"


def _table(rows: list[list[str]], indent: str) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return [indent + "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]


def render_describe(document: dict[str, Any]) -> str:
    meta, status = document["metadata"], document.get("status") or {}
    lines = [f"Name:         {meta['name']}", f"Namespace:    {meta.get('namespace', 'default')}",
             f"API Version:  {document['apiVersion']}", f"Kind:         {document['kind']}", "Status:",
             f"  Phase:          {status.get('phase', '')}", f"  Current Stage:  {status.get('currentStage', '')}",
             f"  Progress:       {status.get('progressText', '')}"]
    if status.get("message"):
        lines.append(f"  Message:        {status['message']}")
    conditions = status.get("conditions") or []
    if conditions:
        lines.append("  Conditions:")
        rows = [["Type", "Status", "Reason", "Last Transition", "Message"]]
        rows += [[c["type"], c["status"], c["reason"], c["lastTransitionTime"], c.get("message", "")] for c in conditions]
        lines += _table(rows, "    ")
    stages = status.get("stages") or {}
    if stages:
        lines.append("  Stages:")
        rows = [["Stage", "Phase", "Job", "Attempts", "Started", "Finished", "Input Key", "Output", "Message"]]
        for name, block in stages.items():
            rows.append([name, block.get("phase", ""), block.get("jobName") or "", str(block.get("attempts", 0)),
                         block.get("startTime") or "", block.get("completionTime") or "",
                         (block.get("inputKey") or "")[:12], (block.get("outputDigest") or "")[:12],
                         block.get("message") or ""])
        lines += _table(rows, "    ")
    progress = status.get("progress")
    if progress:
        lines.append("  Training:")
        for key in ("step", "totalSteps", "epoch", "loss", "evalLoss", "baseEvalLoss", "learningRate",
                    "tokensPerSecond", "etaSeconds", "lastCheckpoint"):
            if key in progress:
                lines.append(f"    {key + ':':<17}{progress[key]}")
    artifacts = status.get("artifacts") or []
    if artifacts:
        lines.append("  Artifacts:")
        rows = [["Name", "Size", "SHA256", "URI"]]
        rows += [[a["name"], f"{a['size'] / 1e6:.1f} MB", a["sha256"][:16], a["uri"]] for a in artifacts]
        lines += _table(rows, "    ")
    return "\n".join(lines) + "\n"
