"""The FineTuneRun CustomResourceDefinition, generated from the API types (`kubetune crd` writes crds/)."""

from __future__ import annotations

from typing import Any

import yaml

from kubetune.api import run_status as rs
from kubetune.api import types as t
from kubetune.api.schema import model_schema

CRD_NAME = f"{t.PLURAL}.{t.GROUP}"

PRINTER_COLUMNS: list[dict[str, Any]] = [
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase", "description": "Run phase"},
    {"name": "Stage", "type": "string", "jsonPath": ".status.currentStage", "description": "Current stage"},
    {"name": "Progress", "type": "string", "jsonPath": ".status.progressText", "description": "Stage progress"},
    {"name": "Loss", "type": "number", "jsonPath": ".status.progress.loss", "description": "Latest training loss"},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    {"name": "Message", "type": "string", "jsonPath": ".status.message", "priority": 1,
     "description": "Why the run is in its phase"},
]


def openapi_schema() -> dict[str, Any]:
    spec = model_schema(t.FineTuneRunSpec)
    spec["default"] = {}
    status = model_schema(rs.FineTuneRunStatus)
    return {
        "type": "object",
        "description": t.FineTuneRunSpec.__doc__,
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string", "description": "APIVersion of this object."},
            "kind": {"type": "string", "description": "Kind of this object."},
            "metadata": {"type": "object"},
            "spec": spec,
            "status": status,
        },
        # The run name becomes part of Job names (`<run>-<stage>-<key>` ≤ 63 chars) and store keys.
        "x-kubernetes-validations": [rule.to_schema() for rule in t.RUN_NAME_RULES],
    }


def crd() -> dict[str, Any]:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": CRD_NAME,
            "labels": {"app.kubernetes.io/name": "kubetune", "app.kubernetes.io/part-of": "kubetune"},
        },
        "spec": {
            "group": t.GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": t.KIND,
                "listKind": f"{t.KIND}List",
                "plural": t.PLURAL,
                "singular": t.SINGULAR,
                "shortNames": list(t.SHORT_NAMES),
                "categories": list(t.CATEGORIES),
            },
            "versions": [
                {
                    "name": t.VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": PRINTER_COLUMNS,
                    "schema": {"openAPIV3Schema": openapi_schema()},
                }
            ],
        },
    }


HEADER = "# Generated from kubetune/api/types.py by `kubetune crd`. Do not edit: edit the types and regenerate.\n"


def render() -> str:
    """The CRD as committed in crds/ (stable key order, so regeneration is byte-for-byte)."""
    return HEADER + yaml.safe_dump(crd(), sort_keys=False, width=120, allow_unicode=True)
