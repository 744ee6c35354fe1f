"""The layout of a topics tree: which files exist, and whether their folders and names match the structure."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from kubetune.datasets_new.errors import DatasetIssue, IssueCollector, printable
from kubetune.datasets_new.files import is_inside, unreadable
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
    # Display paths go into stats.json and records (`metadata.source`): an undecodable byte in a folder name (a
    # surrogate escape) must not make them unwritable as UTF-8.
    shown_root = printable(topics_dir.as_posix())
    if not topics_dir.is_dir():
        problem = "is not a folder" if topics_dir.exists() or topics_dir.is_symlink() else "does not exist"
        issues.add(DatasetIssue(shown_root, f"topics folder {problem}",
                                "pass --topics-dir, or run create_dataset_by_structure.py to scaffold it"))
        return [], []
    tree = _Tree(os.path.realpath(topics_dir), issues)
    found: list[TopicFile] = []
    for category_entry in tree.entries(topics_dir, shown_root):
        shown = f"{shown_root}/{category_entry.name}"
        is_dir = tree.is_dir(category_entry, shown)
        if is_dir is None:
            continue
        category = structure.category(category_entry.name)
        if not is_dir:
            issues.add(DatasetIssue(shown, "file outside any category folder", LAYOUT_HINT))
        elif category is None:
            issues.add(DatasetIssue(shown, f"folder {category_entry.name!r} is not a category of the structure",
                                    "add the category to structure.enriched.json or rename the folder"))
        else:
            found.extend(_scan_category(structure, category, Path(category_entry.path), shown,
                                        printable(topics_dir.name), tree))
    declared = {
        topic_relative_path(category.name, sub.name, content_type).as_posix()
        for category in structure.categories for sub in category.subcategories for content_type in sub.content_types
    }
    present = {topic.source.split("/", 1)[1] for topic in found}
    missing = sorted(f"{shown_root}/{path}" for path in declared - present)
    found.sort(key=lambda topic: (topic.category.name, topic.subcategory.name, topic.content_type))
    return found, missing


def _scan_category(structure: Structure, category: Category, folder: Path, shown_folder: str, root_name: str,
                   tree: _Tree) -> Iterator[TopicFile]:
    issues = tree.issues
    for sub_entry in tree.entries(folder, shown_folder):
        shown = f"{shown_folder}/{sub_entry.name}"
        is_dir = tree.is_dir(sub_entry, shown)
        if is_dir is None:
            continue
        subcategory = category.subcategory(sub_entry.name)
        if not is_dir:
            issues.add(DatasetIssue(shown, "file directly in a category folder", LAYOUT_HINT))
        elif subcategory is None:
            issues.add(DatasetIssue(shown, f"folder {sub_entry.name!r} is not a subcategory of {category.name!r}",
                                    f"add it under {category.name!r} in structure.enriched.json or rename the folder"))
        else:
            for file_entry in tree.entries(Path(sub_entry.path), shown):
                shown_file = f"{shown}/{file_entry.name}"
                is_dir = tree.is_dir(file_entry, shown_file)
                if is_dir is None:
                    continue
                topic = _topic_file(structure, category, subcategory, file_entry.name, is_dir, Path(file_entry.path),
                                    shown_file, f"{root_name}/{category.name}/{subcategory.name}/{file_entry.name}",
                                    issues)
                if topic is not None:
                    yield topic


def _topic_file(structure: Structure, category: Category, subcategory: Subcategory, name: str, is_dir: bool,
                path: Path, shown: str, source: str, issues: IssueCollector) -> TopicFile | None:
    if is_dir:
        issues.add(DatasetIssue(shown, "unexpected folder inside a subcategory folder", LAYOUT_HINT))
        return None
    parts = name.split(".")
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


@dataclass
class _Tree:
    """The topics folder being scanned: nothing outside it is ever listed or read."""

    real_root: str  # the topics folder with every symlink resolved
    issues: IssueCollector

    def entries(self, folder: Path, shown: str) -> list[os.DirEntry[str]]:
        """The folder's entries not starting with '.', sorted by name; none (and an issue) when it cannot be listed."""
        try:
            with os.scandir(folder) as entries:
                return sorted((entry for entry in entries if not entry.name.startswith(".")),
                              key=lambda entry: entry.name)
        except OSError as error:
            self.issues.add(DatasetIssue(shown, f"cannot list folder: {error.strerror or type(error).__name__}",
                                         "make the folder readable by the user running the build"))
            return []

    def is_dir(self, entry: os.DirEntry[str], shown: str) -> bool | None:
        """Whether the entry is a folder (following an in-tree symlink); None, and an issue, for a symlink that leads
        outside the topics folder (a tree never reads beyond itself) or an entry that cannot be examined (a symlink
        loop).

        Plain entries are inside by construction; only symlinks (known from the directory listing, no extra system
        call) are resolved.
        """
        if entry.is_symlink() and not is_inside(Path(entry.path), self.real_root):
            self.issues.add(DatasetIssue(shown, "symlink leads outside the topics folder",
                                         "copy the file or folder into the tree instead of linking to it"))
            return None
        try:
            return entry.is_dir()
        except OSError as error:
            self.issues.add(unreadable(shown, error))
            return None
