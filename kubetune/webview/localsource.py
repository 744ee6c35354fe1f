"""The runs `kubetune run` executed on this machine: their status.json and events.jsonl under .kubetune/runs/, their
outputs in the store each one used (spec.storage, else .kubetune/store, as `kubetune run` chooses)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from kubetune.state_files import read_state_bytes, read_state_json
from kubetune.store import Store, StoreError, open_store
from kubetune.webview.collect import RunReader, summary
from kubetune.webview.model import FetchedFile, NotFound, RunPage, RunSummary

STATUS_FILE, EVENTS_FILE = "status.json", "events.jsonl"
OBJECT_NAME = re.compile(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?")  # metadata.name (and namespace) as the API allows


class LocalRuns:
    def __init__(self, state_dir: Path, store: str | None = None) -> None:
        self.state_dir = state_dir
        self.store_override = store  # `kubetune ui --store`: what `kubetune run --store` was given

    def runs(self) -> list[RunSummary]:
        found = []
        for path in sorted((self.state_dir / "runs").glob(f"*/*/{STATUS_FILE}")):
            document = _read_json(path, self.state_dir)
            if isinstance(document, dict):
                found.append(summary(document))
        return found

    def page(self, namespace: str, name: str) -> RunPage:
        reader = self._reader(namespace, name)
        return reader.page(self._events(namespace, name))

    def download(self, namespace: str, name: str, stage: str, path: str) -> FetchedFile:
        return self._reader(namespace, name).download(stage, path)

    def _folder(self, namespace: str, name: str) -> Path:
        # Names come from the URL: only Kubernetes object names, so no path leaves runs/<namespace>/.
        folder = self.state_dir / "runs" / namespace / name
        if not (OBJECT_NAME.fullmatch(namespace) and OBJECT_NAME.fullmatch(name) and (folder / STATUS_FILE).is_file()):
            raise NotFound(f"no run {namespace}/{name}")
        return folder

    def _reader(self, namespace: str, name: str) -> RunReader:
        document = _read_json(self._folder(namespace, name) / STATUS_FILE, self.state_dir)
        if not isinstance(document, dict):
            raise NotFound(f"{namespace}/{name}: its {STATUS_FILE} is not one kubetune run wrote")
        store, problems = self._store(document)
        return RunReader(document, store, problems)

    def _store(self, document: dict[str, Any]) -> tuple[Store | None, list[str]]:
        storage = (document.get("spec") or {}).get("storage") or {}
        uri = self.store_override or storage.get("uri") or str((self.state_dir / "store").resolve())
        try:
            return open_store(uri, endpoint=storage.get("endpoint"), region=storage.get("region"),
                              path_style=bool(storage.get("pathStyle"))), []
        except (StoreError, OSError, ValueError) as error:
            return None, [f"the store {uri}: {error}"]

    def _events(self, namespace: str, name: str) -> list[dict[str, Any]]:
        path = self._folder(namespace, name) / EVENTS_FILE
        try:
            raw = read_state_bytes(path, self.state_dir)
        except (OSError, ValueError):
            return []  # none yet, or nothing kubetune run wrote (a link, a folder, a huge file): no events to show
        events = []
        for line in raw.decode("utf-8", errors="replace").splitlines():
            try:
                event = json.loads(line)
            except ValueError:
                continue  # a line cut short by a stopped run
            if isinstance(event, dict):
                events.append(event)
        return events


def _read_json(path: Path, state_dir: Path) -> Any:
    try:
        return read_state_json(path, state_dir)
    except (OSError, ValueError):
        return None
