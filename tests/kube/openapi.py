"""The OpenAPI documents kubectl reads: `/openapi/v3` (an index of group-versions, then one document per group-version,
as kube-apiserver's OpenAPI v3 handler serves them) and `/openapi/v2`.

kubectl uses them for three things: `kubectl explain` walks the v3 schema of the kind, client-side validation needs
the v2 document to parse, and `--validate=strict` asks whether a kind's PATCH operation takes the `fieldValidation`
query parameter (cli-runtime's query-param verifier); when it does, validation is left to the server. Custom resources
get the document apiextensions-apiserver's builder makes: list/create/get/replace/patch/delete paths per scope, the
status subresource's paths, and a component schema named by the reversed group (`dev.kubetune.v1alpha1.FineTuneRun`)
whose `metadata` refers to ObjectMeta and which carries `x-kubernetes-group-version-kind`. Built-in kinds get the same
paths with an open object schema (their field-level schemas are not modelled; see README).
"""

from __future__ import annotations

import copy
import hashlib
import json
from typing import Any

from tests.kube.resources import ResourceType

OPENAPI_V2_PROTOBUF = "application/com.github.proto-openapi.spec.v2@v1.0+protobuf"
_META = "io.k8s.apimachinery.pkg.apis.meta.v1"
_OBJECT_META = {
    "description": "ObjectMeta is metadata that all persisted resources must have, which includes all objects users "
    "must create.",
    "type": "object",
    "properties": {
        "name": {"type": "string", "description": "Name must be unique within a namespace."},
        "generateName": {"type": "string", "description": "An optional prefix the server uses to generate a name."},
        "namespace": {"type": "string", "description": "The namespace the object lives in."},
        "labels": {"type": "object", "additionalProperties": {"type": "string", "default": ""},
                   "description": "Map of string keys and values that can be used to organize and categorize objects."},
        "annotations": {"type": "object", "additionalProperties": {"type": "string", "default": ""},
                        "description": "Unstructured key value map stored with a resource."},
        "finalizers": {"type": "array", "items": {"type": "string", "default": ""},
                       "description": "Must be empty before the object is deleted from the registry."},
        "uid": {"type": "string", "description": "The unique in time and space value for this object."},
        "resourceVersion": {"type": "string", "description": "An opaque value that represents the internal version."},
        "generation": {"type": "integer", "format": "int64", "description": "A sequence number of the desired state."},
        "creationTimestamp": {"type": "string", "format": "date-time", "description": "When the object was created."},
        "deletionTimestamp": {"type": "string", "format": "date-time", "description": "When the object will be deleted."},
        "managedFields": {"type": "array", "items": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
                          "description": "Which workflow (field manager) manages which fields."},
        "ownerReferences": {"type": "array", "items": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
                            "description": "Objects depended by this object."},
    },
}
_LIST_META = {
    "description": "ListMeta describes metadata that synthetic resources must have.",
    "type": "object",
    "properties": {"continue": {"type": "string"}, "resourceVersion": {"type": "string"},
                   "remainingItemCount": {"type": "integer", "format": "int64"}},
}
_API_VERSION = "APIVersion defines the versioned schema of this representation of an object."
_KIND = "Kind is a string value representing the REST resource this object represents."
_METADATA = "Standard object's metadata."


def _param(name: str, description: str, kind: str = "string", where: str = "query") -> dict[str, Any]:
    return {"name": name, "in": where, "description": description, "schema": {"type": kind, "uniqueItems": True}}


_NAME = {**_param("name", "name of the resource", where="path"), "required": True}
_NAMESPACE = {**_param("namespace", "object name and auth scope", where="path"), "required": True}
_DRY_RUN = _param("dryRun", "When present, indicates that modifications should not be persisted.")
_FIELD_MANAGER = _param("fieldManager", "fieldManager is a name associated with the actor or entity making changes.")
_FIELD_VALIDATION = _param(
    "fieldValidation",
    "fieldValidation instructs the server on how to handle objects in the request containing unknown or duplicate "
    "fields. Valid values are: Ignore, Warn, Strict.",
)
_FORCE = _param("force", "Force is going to \"force\" Apply requests.", "boolean")
_WRITE = [_DRY_RUN, _FIELD_MANAGER, _FIELD_VALIDATION]
_PATCH_TYPES = (
    "application/json-patch+json",
    "application/merge-patch+json",
    "application/strategic-merge-patch+json",
    "application/apply-patch+yaml",
)


def definition_name(rtype: ResourceType) -> str:
    """apiextensions' name of a custom kind's schema: the group reversed, then version and kind."""
    group = ".".join(reversed(rtype.group.split("."))) if rtype.group else "io.k8s.api.core"
    return f"{group}.{rtype.version}.{rtype.kind}"


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


def _schema(rtype: ResourceType) -> dict[str, Any]:
    """The kind's schema as published: the CRD's, with the standard apiVersion/kind/metadata properties."""
    gvk = [{"group": rtype.group, "version": rtype.version, "kind": rtype.kind}]
    if rtype.schema is None:
        body: dict[str, Any] = {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
    else:
        body = copy.deepcopy(rtype.schema)
    properties = body.setdefault("properties", {}) if rtype.schema is not None else {}
    properties["apiVersion"] = {"type": "string", "description": _API_VERSION}
    properties["kind"] = {"type": "string", "description": _KIND}
    properties["metadata"] = {"allOf": [_ref(f"{_META}.ObjectMeta")], "description": _METADATA}
    if rtype.schema is None:
        body["properties"] = properties
    body["x-kubernetes-group-version-kind"] = gvk
    return body


def _list_schema(rtype: ResourceType) -> dict[str, Any]:
    return {
        "description": f"{rtype.kind}List is a list of {rtype.kind}",
        "type": "object",
        "required": ["items"],
        "properties": {
            "apiVersion": {"type": "string", "description": _API_VERSION},
            "items": {"type": "array", "items": _ref(definition_name(rtype))},
            "kind": {"type": "string", "description": _KIND},
            "metadata": {"allOf": [_ref(f"{_META}.ListMeta")]},
        },
        "x-kubernetes-group-version-kind": [{"group": rtype.group, "version": rtype.version,
                                             "kind": f"{rtype.kind}List"}],
    }


def _operation(rtype: ResourceType, action: str, verb: str, reply: str, params: list[dict[str, Any]],
               body: bool = False) -> dict[str, Any]:
    operation: dict[str, Any] = {
        "description": f"{verb} {rtype.kind}",
        "operationId": f"{verb}{rtype.kind}",
        "parameters": params,
        "responses": {"200": {"description": "OK", "content": {"application/json": {"schema": _ref(reply)}}}},
        "x-kubernetes-action": action,
        "x-kubernetes-group-version-kind": {"group": rtype.group, "version": rtype.version, "kind": rtype.kind},
    }
    if body:
        types: tuple[str, ...] = ("application/json",)
        if action == "patch":  # apiextensions' builder offers no strategic merge patch, and kubectl 1.27+ reads
            # this list to choose between a strategic (built-in kinds) and a JSON merge patch (custom ones). Built-in
            # kinds list none either: their schemas are not modelled, so kubectl builds its strategic merge patch from
            # its compiled-in types instead of failing to find their fields here.
            types = tuple(kind for kind in _PATCH_TYPES if "strategic" not in kind)
        schema = {"type": "object"} if action == "patch" else _ref(definition_name(rtype))
        operation["requestBody"] = {"content": {kind: {"schema": schema} for kind in types}, "required": True}
    return operation


def _paths(rtype: ResourceType) -> dict[str, Any]:
    prefix = f"/apis/{rtype.group}/{rtype.version}" if rtype.group else f"/api/{rtype.version}"
    scope = f"{prefix}/namespaces/{{namespace}}" if rtype.namespaced else prefix
    scoped = [_NAMESPACE] if rtype.namespaced else []
    one, many = definition_name(rtype), f"{definition_name(rtype)}List"
    named = [*scoped, _NAME]
    item = {
        "get": _operation(rtype, "get", "read", one, named),
        "put": _operation(rtype, "put", "replace", one, [*named, *_WRITE], body=True),
        "patch": _operation(rtype, "patch", "patch", one, [*named, *_WRITE, _FORCE], body=True),
        "delete": _operation(rtype, "delete", "delete", one, [*named, _DRY_RUN]),
    }
    paths = {
        f"{scope}/{rtype.plural}": {
            "get": _operation(rtype, "list", "list", many, scoped),
            "post": _operation(rtype, "post", "create", one, [*scoped, *_WRITE], body=True),
            "delete": _operation(rtype, "deletecollection", "deletecollection", "Status", scoped),
        },
        f"{scope}/{rtype.plural}/{{name}}": item,
    }
    if rtype.has_status:
        paths[f"{scope}/{rtype.plural}/{{name}}/status"] = {key: item[key] for key in ("get", "put", "patch")}
    if rtype.namespaced:
        paths[f"{prefix}/{rtype.plural}"] = {"get": _operation(rtype, "list", "list", many, [])}
    return paths


def group_version_document(types: list[ResourceType]) -> dict[str, Any]:
    """The OpenAPI v3 document of one group-version, as `/openapi/v3/apis/<group>/<version>` serves it."""
    paths: dict[str, Any] = {}
    schemas: dict[str, Any] = {f"{_META}.ObjectMeta": _OBJECT_META, f"{_META}.ListMeta": _LIST_META,
                               "Status": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}}
    for rtype in sorted(types, key=lambda r: r.plural):
        paths.update(_paths(rtype))
        schemas[definition_name(rtype)] = _schema(rtype)
        schemas[f"{definition_name(rtype)}List"] = _list_schema(rtype)
    title = "Kubernetes CRD Swagger" if any(rtype.is_custom for rtype in types) else "Kubernetes"
    return {
        "openapi": "3.0.0",
        "info": {"title": title, "version": "v0.1.0"},
        "paths": paths,
        "components": {"schemas": schemas},
    }


def document_hash(document: dict[str, Any]) -> str:
    """The `hash` query of a document's URL in the index (the server's etag: a digest of the document)."""
    return hashlib.sha512(json.dumps(document, sort_keys=True).encode()).hexdigest().upper()


def v3_path(group: str, version: str) -> str:
    return f"apis/{group}/{version}" if group else f"api/{version}"


def v2_document_protobuf() -> bytes:
    """`/openapi/v2` as gnostic's protobuf `Document` with `swagger: "2.0"` and an empty `info`, no definitions:
    kubectl only parses it (its schemas are used by client-side validation, which the server's `fieldValidation`
    support replaces, and by apply's strategic merge of built-in kinds, which falls back to compiled-in types)."""
    swagger = b"2.0"
    return bytes([0x0A, len(swagger)]) + swagger + bytes([0x12, 0x00])


def v2_document_json() -> dict[str, Any]:
    return {"swagger": "2.0", "info": {"title": "Kubernetes", "version": "v1.31.0"}, "paths": {}, "definitions": {}}
