"""Strict decoding (`fieldValidation=Strict`) of custom resources: the fields the server's decoder does not know.

kube-apiserver decodes a custom resource, prunes what its structural schema does not declare and, under
`fieldValidation=Strict`, refuses the request naming each pruned field (`unknown field "spec.foo"`): a create or update
does not decode (400, `<Kind> in version "<v>" cannot be handled as a <Kind>: strict decoding error: ...`), a patch
leaves an object that does not decode (422 on the `patch` field). kubectl asks for Strict by default.
Built-in kinds have no schemas here, so their unknown fields are not found (README).
"""

from __future__ import annotations

from typing import Any

from tests.kube import errors, schema
from tests.kube.resources import ResourceType

Obj = dict[str, Any]

_OBJECT_META_FIELDS = {
    "name", "generateName", "namespace", "selfLink", "uid", "resourceVersion", "generation", "creationTimestamp",
    "deletionTimestamp", "deletionGracePeriodSeconds", "labels", "annotations", "ownerReferences", "finalizers",
    "managedFields",
}


def unknown_fields(rtype: ResourceType, obj: Obj) -> list[str]:
    """What a strict decode of a custom resource names as unknown: the fields pruning drops and unknown metadata
    fields (built-in kinds: not modelled, they have no schema here)."""
    if not rtype.is_custom or rtype.schema is None or not isinstance(obj, dict):
        return []
    meta = obj.get("metadata")
    extra = [f"metadata.{key}" for key in meta if key not in _OBJECT_META_FIELDS] if isinstance(meta, dict) else []
    return sorted(extra + schema.unknown_fields(rtype.schema, obj))


def strict_decoding_error(unknown: list[str]) -> str:
    return "strict decoding error: " + ", ".join(f'unknown field "{path}"' for path in unknown)


def refuse_unknown_on_decode(rtype: ResourceType, obj: Obj) -> None:
    """Create and update under fieldValidation=Strict: the body does not decode (400, transformDecodeError)."""
    unknown = unknown_fields(rtype, obj)
    if unknown:
        raise errors.bad_request(
            f'{rtype.kind} in version "{rtype.version}" cannot be handled as a {rtype.kind}: '
            + strict_decoding_error(unknown)
        )
