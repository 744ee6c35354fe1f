"""Small manifests the emulator's own tests build on: a throwaway CRD and minimal Jobs."""

from __future__ import annotations

from typing import Any

Obj = dict[str, Any]

WIDGETS = "widgets.example.dev"


def widget_crd(*, versions: tuple[str, ...] = ("v1",), status_subresource: bool = True) -> Obj:
    """`Widget` (example.dev, namespaced, short name `wg`) with a schema that has a default, bounds, an enum and
    a CEL rule, so that schema handling is exercised too. The first version is the storage version."""
    schema = {
        "type": "object",
        "properties": {
            "spec": {
                "type": "object",
                "properties": {
                    "size": {"type": "integer", "minimum": 1, "maximum": 100, "default": 3},
                    "color": {"type": "string", "enum": ["red", "blue"]},
                    "min": {"type": "integer", "default": 0},
                    "max": {"type": "integer", "default": 10},
                    "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
                },
                "x-kubernetes-validations": [{"rule": "self.min <= self.max", "message": "min must not exceed max"}],
            },
            "status": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
        },
    }
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": WIDGETS},
        "spec": {
            "group": "example.dev",
            "scope": "Namespaced",
            "names": {
                "plural": "widgets",
                "singular": "widget",
                "kind": "Widget",
                "shortNames": ["wg"],
                "categories": ["all"],
            },
            "versions": [
                {
                    "name": version,
                    "served": True,
                    "storage": index == 0,
                    "subresources": {"status": {}} if status_subresource else {},
                    "schema": {"openAPIV3Schema": schema},
                }
                for index, version in enumerate(versions)
            ],
        },
    }


def widget(name: str, namespace: str = "default", **spec: Any) -> Obj:
    return {
        "apiVersion": "example.dev/v1",
        "kind": "Widget",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    }


def job(
    name: str,
    command: list[str],
    *,
    namespace: str = "default",
    suspend: bool = False,
    backoff_limit: int = 0,
    grace_seconds: int = 30,
    env: list[Obj] | None = None,
    volumes: list[Obj] | None = None,
    volume_mounts: list[Obj] | None = None,
    **spec: Any,
) -> Obj:
    """A one-container batch/v1 Job (restartPolicy Never); extra keyword arguments go into the Job spec."""
    container: Obj = {
        "name": "main",
        "image": "kubetune/jobs:test",
        "command": command,
        "env": env or [],
        "volumeMounts": volume_mounts or [],
    }
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "suspend": suspend,
            "backoffLimit": backoff_limit,
            **spec,
            "template": {
                "spec": {
                    "restartPolicy": "Never",
                    "terminationGracePeriodSeconds": grace_seconds,
                    "containers": [container],
                    "volumes": volumes or [],
                }
            },
        },
    }
