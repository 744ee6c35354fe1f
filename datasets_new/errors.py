"""Input problems found while reading a dataset tree, collected so one run reports all of them."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

# Exit code for bad input (docs/contracts.md: configuration or input error, never retried).
EXIT_BAD_INPUT = 2


@dataclass(frozen=True)
class DatasetIssue:
    """One problem in one file: where it is, what is wrong, and how to fix it."""

    path: str
    message: str
    hint: str
    line: int | None = None
    column: int | None = None
    field: str | None = None

    def location(self) -> str:
        parts = [self.path]
        if self.line is not None:
            parts.append(str(self.line))
            if self.column is not None:
                parts.append(str(self.column))
        return ":".join(parts)

    def format(self) -> str:
        return f"{printable(self.location())}: {printable(self.message)}\n    hint: {printable(self.hint)}"


@dataclass
class IssueCollector:
    """Collects issues across files; keeps the first `limit` for the report but counts them all."""

    limit: int = 50
    issues: list[DatasetIssue] = field(default_factory=list)
    total: int = 0

    def add(self, issue: DatasetIssue) -> None:
        self.total += 1
        if len(self.issues) < self.limit:
            self.issues.append(issue)

    def extend(self, issues: list[DatasetIssue], total: int) -> None:
        """Add issues found elsewhere: `total` counts those that were already left out of `issues`."""
        for issue in issues:
            self.add(issue)
        self.total += total - len(issues)

    def __bool__(self) -> bool:
        return self.total > 0

    def raise_if_any(self) -> None:
        if self.total:
            raise DatasetError(list(self.issues), self.total)


class DatasetError(Exception):
    """Raised when the input is malformed; carries every issue found (up to the collector's limit)."""

    def __init__(self, issues: list[DatasetIssue], total: int | None = None) -> None:
        self.issues = issues
        self.total = len(issues) if total is None else total
        super().__init__(self.summary())

    def summary(self) -> str:
        first = self.issues[0] if self.issues else None
        head = f"{first.location()}: {first.message}" if first else "invalid dataset"
        more = f" (and {self.total - 1} more)" if self.total > 1 else ""
        return printable(f"{self.total} dataset error(s): {head}{more}")

    def report(self) -> str:
        lines = [issue.format() for issue in self.issues]
        if self.total > len(self.issues):
            lines.append(f"... {self.total - len(self.issues)} more error(s) not shown (raise --max-errors to see them)")
        lines.append(self.summary())
        return "\n".join(lines)


class OutputError(Exception):
    """An output path that cannot be written (a folder, under a file, not writable): nothing was written."""

    def __init__(self, issue: DatasetIssue) -> None:
        self.issue = issue
        super().__init__(printable(f"{issue.location()}: {issue.message}"))


# Characters that would break a one-line message or fail to encode: controls, lone surrogates (undecodable file
# names arrive as surrogate escapes), line/paragraph separators and bidirectional overrides.
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def printable(text: str) -> str:
    """`text` with every character that could split or garble a one-line message shown as its escape."""
    return _UNPRINTABLE.sub(lambda match: match.group().encode("unicode_escape").decode("ascii"), text)
