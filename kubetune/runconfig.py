"""The resolved run config (`run.json`) every job receives: the contract between executors and jobs."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubetune.api import types as t
from kubetune.sources import SOURCES, Sources
from kubetune.stages import StageRef
from kubetune.store.keys import validate_prefix


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

    def dumps(self, *, compact: bool = False) -> str:
        """Indented for a person to read; `compact`: one line of UTF-8 (no \\u escapes), the least room it takes."""
        if compact:
            return json.dumps(self.to_json(), sort_keys=True, ensure_ascii=False, separators=(",", ":"))
        return json.dumps(self.to_json(), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RunConfig:
        """Raises ValueError (TypeError for a wrong type) naming the field when `data` is not a run config: a job must
        refuse a stage prefix that leaves the run's folder (or is no text) before it writes anything under it, not
        fail on it mid-stage."""
        _object(data, "run config")
        meta, store, stages = (_object(data.get(name), name) for name in ("metadata", "store", "stages"))
        return cls(
            name=_text(meta.get("name"), "metadata.name"),
            namespace=_text(meta.get("namespace"), "metadata.namespace"),
            uid=_text(meta.get("uid", ""), "metadata.uid", empty=True),
            spec=t.FineTuneRunSpec.model_validate(data["spec"]),
            store=StoreConfig(uri=_text(store.get("uri"), "store.uri"),
                              endpoint=_optional_text(store.get("endpoint"), "store.endpoint"),
                              region=_optional_text(store.get("region"), "store.region"),
                              path_style=_flag(store.get("pathStyle", False), "store.pathStyle")),
            stages={stage: _stage_ref(stage, ref) for stage, ref in stages.items()},
            sources=Sources.from_json(data["sources"]) if "sources" in data else None,
        )

    @classmethod
    def load(cls, path: Path) -> RunConfig:
        return cls.from_json(json.loads(path.read_text(encoding="utf-8")))


def _object(value: Any, field: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise TypeError(f"{field} must be a JSON object")
    return value


def _text(value: Any, field: str, *, empty: bool = False) -> str:
    if not isinstance(value, str) or not (value or empty):
        raise ValueError(f"{field} must be a{'' if empty else ' non-empty'} string, not {value!r:.80}")
    return value


def _optional_text(value: Any, field: str) -> str | None:
    return None if value is None else _text(value, field)


def _flag(value: Any, field: str) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{field} must be true or false, not {value!r:.80}")
    return value


def _stage_ref(stage: str, ref: Any) -> StageRef:
    if stage not in (SOURCES, *t.STAGES):
        raise ValueError(f"stages: unknown stage {stage!r:.80}")
    ref = _object(ref, f"stages.{stage}")
    prefix = _text(ref.get("prefix"), f"stages.{stage}.prefix")
    try:
        prefix = validate_prefix(prefix)  # the stage writes under it: no '..', no absolute path, no empty segment
    except ValueError as error:
        raise ValueError(f"stages.{stage}.prefix: {error}") from None
    return StageRef(key=_text(ref.get("key"), f"stages.{stage}.key"), prefix=prefix)
