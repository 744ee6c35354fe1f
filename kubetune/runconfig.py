"""The resolved run config (`run.json`) every job receives: the contract between executors and jobs."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubetune.api import types as t
from kubetune.sources import Sources
from kubetune.stages import StageRef


@dataclass(frozen=True)
class StoreConfig:
    """How to reach the object store. Credentials are not here: they come from the environment."""

    uri: str
    endpoint: str | None = None
    region: str | None = None
    path_style: bool = False

    @classmethod
    def from_spec(cls, storage: t.StorageSpec, default_uri: str) -> StoreConfig:
        return cls(uri=storage.uri or default_uri, endpoint=storage.endpoint, region=storage.region,
                   path_style=storage.path_style)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"uri": self.uri, "pathStyle": self.path_style}
        if self.endpoint:
            out["endpoint"] = self.endpoint
        if self.region:
            out["region"] = self.region
        return out


@dataclass(frozen=True)
class RunConfig:
    name: str
    namespace: str
    spec: t.FineTuneRunSpec
    store: StoreConfig
    stages: Mapping[str, StageRef]
    uid: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)
    sources: Sources | None = None  # what the keys were computed from: jobs check they read that content

    def to_json(self) -> dict[str, Any]:
        return {
            "apiVersion": t.API_VERSION,
            "kind": t.KIND,
            "metadata": {"name": self.name, "namespace": self.namespace, "uid": self.uid},
            "spec": self.spec.to_manifest(),
            "store": self.store.to_json(),
            "stages": {stage: ref.to_json() for stage, ref in self.stages.items()},
            **({"sources": self.sources.to_json()} if self.sources is not None else {}),
        }

    def dumps(self) -> str:
        return json.dumps(self.to_json(), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RunConfig:
        meta, store = data["metadata"], data["store"]
        return cls(
            name=meta["name"],
            namespace=meta["namespace"],
            uid=meta.get("uid", ""),
            spec=t.FineTuneRunSpec.model_validate(data["spec"]),
            store=StoreConfig(uri=store["uri"], endpoint=store.get("endpoint"), region=store.get("region"),
                              path_style=bool(store.get("pathStyle", False))),
            stages={stage: StageRef(key=ref["key"], prefix=ref["prefix"]) for stage, ref in data["stages"].items()},
            sources=Sources.from_json(data["sources"]) if "sources" in data else None,
        )

    @classmethod
    def load(cls, path: Path) -> RunConfig:
        return cls.from_json(json.loads(path.read_text(encoding="utf-8")))
