"""Scaffold the topics tree from structure.enriched.json: one folder per subcategory, one `[]` file per content type.

Idempotent: existing folders and files are never touched, so it is safe to run after every structure edit.

    python datasets_new/create_dataset_by_structure.py [--structure …] [--topics-dir …] [--dry-run]

Exit codes: 0 done (lists what was created); 2 the structure file is invalid, or a file cannot be created (nothing
is created through a symlink that leads outside the topics folder).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from kubetune.datasets_new.errors import EXIT_BAD_INPUT, DatasetIssue, IssueCollector
from kubetune.datasets_new.files import is_inside
from kubetune.datasets_new.structure import Structure, load_structure, topic_relative_path

HERE = Path(__file__).resolve().parent
EMPTY_TOPIC = b"[]\n"


def missing_topic_files(structure: Structure, topics_dir: Path) -> list[Path]:
    """Topic files the structure declares that do not exist yet, in structure order."""
    return [
        topics_dir / topic_relative_path(category.name, sub.name, content_type)
        for category in structure.categories
        for sub in category.subcategories
        for content_type in sub.content_types
        if not (topics_dir / topic_relative_path(category.name, sub.name, content_type)).exists()
    ]


class ScaffoldError(Exception):
    def __init__(self, issue: DatasetIssue) -> None:
        super().__init__(issue.message)
        self.issue = issue


def scaffold(structure: Structure, topics_dir: Path, dry_run: bool = False) -> list[Path]:
    """Create the missing topic files (and their folders); return them. Never overwrites, never writes outside
    `topics_dir`; raises ScaffoldError at the first file it cannot create (those before it stay created)."""
    created = missing_topic_files(structure, topics_dir)
    real_root = os.path.realpath(topics_dir)
    for path in created:
        existing = path.parent
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
        if topics_dir.exists() and not is_inside(existing, real_root):
            raise ScaffoldError(DatasetIssue(existing.as_posix(), "symlink leads outside the topics folder",
                                             "replace the link with a folder inside the tree"))
    if not dry_run:
        for path in created:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                with path.open("xb") as stream:  # "x": fail rather than overwrite a file that appeared meanwhile
                    stream.write(EMPTY_TOPIC)
            except OSError as error:
                raise ScaffoldError(DatasetIssue(path.as_posix(), f"cannot create: {error.strerror}",
                                                 "check that --topics-dir is a writable folder and that no file "
                                                 "stands where a folder must be")) from error
    return created


def main(argv: Sequence[str] | None = None) -> int:
    cli = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                  formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    cli.add_argument("--structure", type=Path, default=HERE / "structure.enriched.json")
    cli.add_argument("--topics-dir", type=Path, default=HERE / "topics")
    cli.add_argument("--dry-run", action="store_true", help="list what would be created, create nothing")
    args = cli.parse_args(argv)
    issues = IssueCollector()
    structure = load_structure(args.structure, args.structure.as_posix(), issues)
    if structure is None:
        for issue in issues.issues:
            print(issue.format(), file=sys.stderr)
        return EXIT_BAD_INPUT
    try:
        created = scaffold(structure, args.topics_dir, args.dry_run)
    except ScaffoldError as error:
        print(error.issue.format(), file=sys.stderr)
        return EXIT_BAD_INPUT
    verb = "would create" if args.dry_run else "created"
    for path in created:
        print(f"{verb} {path.as_posix()}")
    print(f"{verb} {len(created)} topic file(s); nothing existing was changed", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
