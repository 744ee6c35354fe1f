"""The base every API model shares: camelCase on the wire, unknown fields rejected, CEL rules attached."""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel


class CelRule:
    """A CEL rule that becomes an `x-kubernetes-validations` entry on the model's schema.

    `field_path` points the error at the field the rule is about (as the API server reports it), relative to the
    object the rule sits on.
    """

    def __init__(self, rule: str, message: str, field_path: str | None = None) -> None:
        self.rule = rule
        self.message = message
        self.field_path = field_path

    def to_schema(self) -> dict[str, str]:
        entry = {"rule": self.rule, "message": self.message}
        if self.field_path:
            entry["fieldPath"] = self.field_path
        return entry


class KeyRule:
    """A CEL condition on every key `k` of a map field (`Annotated[dict[...], KeyRule(...)]`).

    Structural schemas cannot describe map keys, so the CRD carries the condition as an `x-kubernetes-validations`
    rule on the map itself, which the API server reports at the map's path; `kubetune validate` evaluates the same rule.
    """

    def __init__(self, condition: str, message: str) -> None:
        self.condition = condition
        self.message = message

    def to_schema(self) -> dict[str, str]:
        return {"rule": f"self.all(k, {self.condition})", "message": self.message}


class ListMapKeys:
    """Marks a list of objects as a map keyed by these fields (`Annotated[list[...], ListMapKeys("type")]`), as
    kubebuilder's `+listType=map` and `+listMapKey` do: the server refuses two items with the same keys, and
    server-side apply merges the items by key instead of owning the list as a whole. Keys must be required fields."""

    def __init__(self, *keys: str) -> None:
        self.keys = keys

    def to_schema(self) -> dict[str, Any]:
        return {"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": list(self.keys)}


def cel_string(text: str) -> str:
    """`text` as a single-quoted CEL string literal."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


class ApiModel(BaseModel):
    """Base of every spec/status model."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        validate_default=True,
        use_attribute_docstrings=True,
    )

    # Cross-field rules, evaluated by the API server (CEL) and by `kubetune validate` (cel-python).
    cel_rules: ClassVar[tuple[CelRule, ...]] = ()

    def to_manifest(self) -> dict[str, Any]:
        """The camelCase JSON form, defaults included, as it travels to jobs and the API server."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)
