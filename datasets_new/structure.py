"""`structure.enriched.json`: the categories, subcategories and content types a topics tree may hold."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubetune.datasets_new.errors import DatasetIssue, IssueCollector
from kubetune.datasets_new.jsonsource import JsonDocument, PositionIndex, format_path, read_json_document
from kubetune.datasets_new.schema import compile_schema

# Content type -> the schema its samples follow (in schemas/).
CONTENT_TYPE_SCHEMAS = {"reasoning": "schema_reasoning.json"}

_NAME_PATTERN = "^[a-z0-9_]+$"
_NAME_HINT = "names are lowercase letters, digits and '_' (they become folder and file names)"
_TEXT = {"type": "string", "minLength": 1, "pattern": "\\S"}
_TAGS = {"type": "array", "items": {"type": "string", "minLength": 1, "pattern": "^\\S(.*\\S)?$"},
         "x-hint": "tags is a list of non-empty strings, e.g. [\"identity\", \"self\"]"}
_SUBCATEGORY = {
    "type": "object",
    "required": ["name", "description", "tags", "content_types"],
    "additionalProperties": False,
    "properties": {
        "name": {"type": "string", "pattern": _NAME_PATTERN, "x-hint": _NAME_HINT},
        "description": _TEXT,
        "tags": _TAGS,
        "content_types": {"type": "array", "minItems": 1, "uniqueItems": True,
                          "items": {"enum": sorted(CONTENT_TYPE_SCHEMAS)},
                          "x-hint": f"content types with a schema: {', '.join(sorted(CONTENT_TYPE_SCHEMAS))}"},
    },
}
_STRUCTURE_SCHEMA = {
    "type": "object",
    "required": ["version", "name", "description", "categories"],
    "additionalProperties": False,
    "properties": {
        "version": {"const": 1, "x-hint": "this builder reads structure version 1"},
        "name": _TEXT,
        "description": _TEXT,
        "categories": {"type": "array", "minItems": 1, "items": {
            "type": "object",
            "required": ["name", "description", "tags", "subcategories"],
            "additionalProperties": False,
            "properties": {
                "name": {"type": "string", "pattern": _NAME_PATTERN, "x-hint": _NAME_HINT},
                "description": _TEXT,
                "tags": _TAGS,
                "subcategories": {"type": "array", "minItems": 1, "items": _SUBCATEGORY},
            },
        }},
    },
}
_CHECK_STRUCTURE = compile_schema(_STRUCTURE_SCHEMA)


@dataclass(frozen=True)
class Subcategory:
    name: str
    description: str
    tags: tuple[str, ...]
    content_types: tuple[str, ...]


@dataclass(frozen=True)
class Category:
    name: str
    description: str
    tags: tuple[str, ...]
    subcategories: tuple[Subcategory, ...]

    def subcategory(self, name: str) -> Subcategory | None:
        return next((sub for sub in self.subcategories if sub.name == name), None)


@dataclass(frozen=True)
class Structure:
    name: str
    description: str
    categories: tuple[Category, ...]

    def category(self, name: str) -> Category | None:
        return next((category for category in self.categories if category.name == name), None)


def topic_file_name(category: str, subcategory: str, content_type: str) -> str:
    return f"{category}.{subcategory}.{content_type}.json"


def topic_relative_path(category: str, subcategory: str, content_type: str) -> Path:
    return Path(category, subcategory, topic_file_name(category, subcategory, content_type))


def load_structure(path: Path, shown: str, issues: IssueCollector) -> Structure | None:
    """Read and check the structure file; report problems into `issues` and return None when it is unusable."""
    document = read_json_document(path, shown)
    if isinstance(document, DatasetIssue):
        issues.add(document)
        return None
    before = issues.total
    violations: list[Any] = []
    _CHECK_STRUCTURE(document.value, (), violations)
    positions = PositionIndex(document.text) if violations else None
    for violation in violations:
        assert positions is not None
        line, column = positions.line_column(violation.path)
        issues.add(DatasetIssue(shown, violation.message, violation.hint, line=line, column=column,
                                field=format_path(violation.path) or None))
    if violations:
        return None
    _check_unique_names(document, issues)
    if issues.total != before:
        return None
    return _to_structure(document.value)


def _check_unique_names(document: JsonDocument, issues: IssueCollector) -> None:
    positions: PositionIndex | None = None

    def report(path: tuple[str | int, ...], message: str) -> None:
        nonlocal positions
        positions = positions or PositionIndex(document.text)
        line, column = positions.line_column(path)
        issues.add(DatasetIssue(document.shown, message, "give every category (and every subcategory within a "
                                "category) its own name", line=line, column=column, field=format_path(path)))

    seen_categories: set[str] = set()
    for index, category in enumerate(document.value["categories"]):
        if category["name"] in seen_categories:
            report(("categories", index, "name"), f"category {category['name']!r} is defined twice")
        seen_categories.add(category["name"])
        seen_subcategories: set[str] = set()
        for sub_index, subcategory in enumerate(category["subcategories"]):
            if subcategory["name"] in seen_subcategories:
                report(("categories", index, "subcategories", sub_index, "name"),
                       f"subcategory {category['name']}/{subcategory['name']} is defined twice")
            seen_subcategories.add(subcategory["name"])


def _to_structure(value: dict[str, Any]) -> Structure:
    return Structure(
        name=value["name"],
        description=value["description"],
        categories=tuple(
            Category(
                name=category["name"],
                description=category["description"],
                tags=tuple(category["tags"]),
                subcategories=tuple(
                    Subcategory(sub["name"], sub["description"], tuple(sub["tags"]), tuple(sub["content_types"]))
                    for sub in category["subcategories"]
                ),
            )
            for category in value["categories"]
        ),
    )
