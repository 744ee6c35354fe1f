"""The layout of a topics tree: which files exist, and whether their folders and names match the structure."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from kubetune.datasets_new.errors import DatasetIssue, IssueCollector
from kubetune.datasets_new.structure import (
    Category,
    Structure,
    Subcategory,
    topic_file_name,
    topic_relative_path,
)

LAYOUT_HINT = "topic files live at topics/<category>/<subcategory>/<category>.<subcategory>.<content_type>.json"


@dataclass(frozen=True)
class TopicFile:
    category: Category
    subcategory: Subcategory
    content_type: str
    path: Path
    shown: str
    source: str


def scan_topics(structure: Structure, topics_dir: Path, issues: IssueCollector) -> tuple[list[TopicFile], list[str]]:
    """Check the tree's layout against the structure; return its topic files in build order and the topic files
    the structure declares but the tree lacks."""
    shown_root = topics_dir.as_posix()
    if not topics_dir.is_dir():
        issues.add(DatasetIssue(shown_root, "topics folder does not exist",
                                "pass --topics-dir, or run create_dataset_by_structure.py to scaffold it"))
        return [], []
    found: list[TopicFile] = []
    for category_entry in _visible_entries(topics_dir):
        shown = f"{shown_root}/{category_entry.name}"
        category = structure.category(category_entry.name)
        if not category_entry.is_dir():
            issues.add(DatasetIssue(shown, "file outside any category folder", LAYOUT_HINT))
        elif category is None:
            issues.add(DatasetIssue(shown, f"folder {category_entry.name!r} is not a category of the structure",
                                    "add the category to structure.enriched.json or rename the folder"))
        else:
            found.extend(_scan_category(structure, category, Path(category_entry.path), shown, topics_dir.name,
                                        issues))
    declared = {
        topic_relative_path(category.name, sub.name, content_type).as_posix()
        for category in structure.categories for sub in category.subcategories for content_type in sub.content_types
    }
    present = {topic.source.split("/", 1)[1] for topic in found}
    missing = sorted(f"{shown_root}/{path}" for path in declared - present)
    found.sort(key=lambda topic: (topic.category.name, topic.subcategory.name, topic.content_type))
    return found, missing


def _scan_category(structure: Structure, category: Category, folder: Path, shown_folder: str, root_name: str,
                   issues: IssueCollector) -> Iterator[TopicFile]:
    for sub_entry in _visible_entries(folder):
        shown = f"{shown_folder}/{sub_entry.name}"
        subcategory = category.subcategory(sub_entry.name)
        if not sub_entry.is_dir():
            issues.add(DatasetIssue(shown, "file directly in a category folder", LAYOUT_HINT))
        elif subcategory is None:
            issues.add(DatasetIssue(shown, f"folder {sub_entry.name!r} is not a subcategory of {category.name!r}",
                                    f"add it under {category.name!r} in structure.enriched.json or rename the folder"))
        else:
            for file_entry in _visible_entries(Path(sub_entry.path)):
                topic = _topic_file(structure, category, subcategory, Path(file_entry.path),
                                    f"{shown}/{file_entry.name}",
                                    f"{root_name}/{category.name}/{subcategory.name}/{file_entry.name}", issues)
                if topic is not None:
                    yield topic


def _topic_file(structure: Structure, category: Category, subcategory: Subcategory, path: Path, shown: str,
                source: str, issues: IssueCollector) -> TopicFile | None:
    if path.is_dir():
        issues.add(DatasetIssue(shown, "unexpected folder inside a subcategory folder", LAYOUT_HINT))
        return None
    parts = path.name.split(".")
    if len(parts) != 4 or parts[3] != "json":
        example = topic_file_name(category.name, subcategory.name, subcategory.content_types[0])
        issues.add(DatasetIssue(shown, "file name is not <category>.<subcategory>.<content_type>.json",
                                f"rename it, e.g. {example}"))
        return None
    file_category, file_subcategory, content_type = parts[:3]
    if (file_category, file_subcategory) != (category.name, subcategory.name):
        named = structure.category(file_category)
        if named is not None and named.subcategory(file_subcategory) is not None:
            hint = f"move it to topics/{file_category}/{file_subcategory}/"
        else:
            hint = f"rename it to {topic_file_name(category.name, subcategory.name, content_type)}"
        issues.add(DatasetIssue(
            shown, f"file is named for {file_category}/{file_subcategory} but lies in "
            f"{category.name}/{subcategory.name}", hint))
        return None
    if content_type not in subcategory.content_types:
        issues.add(DatasetIssue(
            shown, f"content type {content_type!r} is not listed for {category.name}/{subcategory.name}",
            f"listed content types: {', '.join(subcategory.content_types)}; "
            "add it to the subcategory's content_types in structure.enriched.json or rename the file"))
        return None
    return TopicFile(category, subcategory, content_type, path, shown, source)


def _visible_entries(folder: Path) -> list[os.DirEntry[str]]:
    with os.scandir(folder) as entries:
        return sorted((entry for entry in entries if not entry.name.startswith(".")), key=lambda entry: entry.name)
