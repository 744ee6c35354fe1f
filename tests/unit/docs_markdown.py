"""What a user can copy out of the project's Markdown: fenced blocks, inline code spans, links, and the command lines
in them (prompts dropped, continuation lines joined, one entry per command of a `&&` / `;` / `|` chain)."""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOCS = (
    ROOT / "README.md",
    *sorted((ROOT / "docs").glob("*.md")),
    ROOT / "datasets_new" / "README.md",
    *sorted((ROOT / "charts").glob("*/README.md")),
)
SHELL_LANGUAGES = {"bash", "sh", "console", "shell"}
FENCE = re.compile(r"^\s*```(\S*)\s*$")
# A command of ours: the CLI, or Python running one of our modules or scripts.
OUR_COMMAND = re.compile(r"(?:^|\s)(?:\S*/)?(?:kubetune|python3?)(?:\s|$)")
CONTROL_OPERATORS = {"&&", "||", ";", "|", "&"}


@dataclass(frozen=True)
class Block:
    doc: Path
    line: int  # of the opening fence
    language: str
    text: str


@dataclass(frozen=True)
class Snippet:
    """A command line or a code span, with where the docs show it."""
    doc: Path
    line: int
    text: str

    @property
    def where(self) -> str:
        return f"{self.doc.relative_to(ROOT)}:{self.line}"


def fenced_blocks(doc: Path) -> list[Block]:
    blocks: list[Block] = []
    language: str | None = None
    start = 0
    body: list[str] = []
    for number, line in enumerate(doc.read_text(encoding="utf-8").splitlines(), 1):
        fence = FENCE.match(line)
        if language is None and fence:
            language, start, body = fence.group(1).lower(), number, []
        elif language is not None and fence and not fence.group(1):
            blocks.append(Block(doc, start, language, "\n".join(body)))
            language = None
        elif language is not None:
            body.append(line)
    return blocks


def prose(doc: Path) -> str:
    """The text outside fenced blocks; every fenced line is blanked, so offsets still give line numbers."""
    lines, inside = [], False
    for line in doc.read_text(encoding="utf-8").splitlines():
        fence = FENCE.match(line)
        if fence and (not inside or not fence.group(1)):
            inside = not inside
            lines.append("")
        else:
            lines.append("" if inside else line)
    return "\n".join(lines)


def code_spans(doc: Path) -> list[Snippet]:
    """Inline code: a span may run across a line break (Markdown reads it as a space), never across a paragraph."""
    text = prose(doc)
    return [Snippet(doc, text.count("\n", 0, match.start()) + 1, re.sub(r"\s*\n\s*", " ", match.group(1)).strip())
            for match in re.finditer(r"(?<!`)`(?!`)((?:[^`\n]|\n(?!\s*\n))+?)`(?!`)", text)]


def links(doc: Path) -> list[Snippet]:
    text = prose(doc)
    return [Snippet(doc, text.count("\n", 0, match.start()) + 1, match.group(1))
            for match in re.finditer(r"\]\(([^)\s]+)\)", text)]


def command_lines(block: Block) -> list[Snippet]:
    """The command lines of a block: every line of a shell block; of an unmarked block, the lines that run one of
    our commands (such blocks also hold output and error examples)."""
    lines: list[Snippet] = []
    pending, pending_line = "", 0
    for offset, raw in enumerate(block.text.splitlines(), 1):
        line = raw.strip().removeprefix("$ ")
        if not pending:
            pending_line = block.line + offset
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        text, pending = (pending + line).strip(), ""
        if text and not text.startswith("#") and (block.language in SHELL_LANGUAGES or OUR_COMMAND.search(text)):
            lines.append(Snippet(block.doc, pending_line, text))
    return lines


def split_commands(line: str) -> list[list[str]]:
    """The simple commands of a shell line, comments dropped; raises ValueError where the shell could not read it."""
    # `<a|b|c>` is a placeholder for one of a, b, c, not a pipe.
    line = re.sub(r"<[^<>\s]*>", lambda match: match.group().replace("|", "\0"), line)
    lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|")
    lexer.whitespace_split = True
    lexer.commenters = "#"
    commands: list[list[str]] = [[]]
    for token in lexer:
        if token in CONTROL_OPERATORS:
            commands.append([])
        else:
            commands[-1].append(token.replace("\0", "|"))
    return [command for command in commands if command]


def heading_anchors(doc: Path) -> set[str]:
    """GitHub's anchors for a file's headings: lower case, punctuation but '-' and '_' dropped, spaces to '-'."""
    anchors = set()
    for match in re.finditer(r"(?m)^#{1,6}\s+(.+?)\s*$", prose(doc)):
        slug = re.sub(r"[^\w\- ]", "", match.group(1).lower()).replace(" ", "-")
        anchors.add(slug)
    return anchors
