"""The real parsers, asked about the command lines the docs show: argparse's own verdict, a lenient copy for mentions
that leave out required arguments, a module's main() stopped right after it parsed, and a benchmark's flags rebuilt
from its source (the benchmarks import torch and need a GPU)."""

from __future__ import annotations

import argparse
import ast
import contextlib
import io
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

REAL_PARSE_ARGS = argparse.ArgumentParser.parse_args


def parse_failure(parser: argparse.ArgumentParser, args: list[str]) -> str | None:
    """argparse's own complaint about `args`, or None when the parser takes them."""
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
            REAL_PARSE_ARGS(parser, args)
    except SystemExit as exit_:
        return None if exit_.code == 0 else stderr.getvalue().strip().splitlines()[-1]
    return None


def subparsers(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from subparsers(sub)


def lenient(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The same parser with every argument optional: for mentions that name flags without the rest of a command."""
    for each in subparsers(parser):
        for action in each._actions:
            if isinstance(action, argparse._SubParsersAction):
                continue
            action.required = False
            if not action.option_strings and action.nargs in (None, "+"):
                action.nargs = "?" if action.nargs is None else "*"
    return parser


class _Parsed(Exception):
    """Raised in place of running a module's main() once its real parser took the arguments."""


def parse_with_module_main(main: Callable[..., Any], args: list[str], monkeypatch: pytest.MonkeyPatch,
                           *, mention: bool) -> str | None:
    """Run the module's main() up to its parse_args: the real parser (lenient for a mention in prose), nothing after
    it runs."""
    def parse_only(self: argparse.ArgumentParser, argv: Any = None, namespace: Any = None) -> Any:
        parser = lenient(self) if mention else self
        failure = parse_failure(parser, list(argv) if argv is not None else sys.argv[1:])
        if failure:
            raise SystemExit(failure)
        raise _Parsed

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_only)
    monkeypatch.setattr(sys, "argv", ["prog", *args])
    try:
        main(args) if main.__code__.co_argcount else main()
    except _Parsed:
        return None
    except SystemExit as exit_:
        return str(exit_.code)
    finally:
        monkeypatch.setattr(argparse.ArgumentParser, "parse_args", REAL_PARSE_ARGS)
    return "main() returned without parsing its arguments"


class ScriptParser:
    """A benchmark's command-line flags read from its source (the scripts import torch and need a GPU): the
    add_argument calls rebuilt as a real parser, with their nargs, action, int/float type and choices where the
    choices are literals of the script or of a sibling it imports."""

    def __init__(self, script: Path) -> None:
        self.folder, self.name = script.parent, script.name
        self.tree = ast.parse(script.read_text(encoding="utf-8"))

    def parser(self) -> argparse.ArgumentParser:
        parser = argparse.ArgumentParser(prog=self.name)
        for call in ast.walk(self.tree):
            if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute)
                    and call.func.attr == "add_argument"):
                continue
            names = [arg.value for arg in call.args if isinstance(arg, ast.Constant) and isinstance(arg.value, str)]
            kwargs: dict[str, Any] = {}
            for keyword in call.keywords:
                if keyword.arg in ("action", "nargs") and isinstance(keyword.value, ast.Constant):
                    kwargs[keyword.arg] = keyword.value.value
                elif keyword.arg == "type" and isinstance(keyword.value, ast.Name) and keyword.value.id in ("int", "float"):
                    kwargs["type"] = {"int": int, "float": float}[keyword.value.id]
                elif keyword.arg == "choices" and (choices := self.values(keyword.value, self.tree)) is not None:
                    kwargs["choices"] = choices
            if names and names[0].startswith("-"):
                parser.add_argument(*names, **kwargs)
            elif names:
                parser.add_argument(*names, nargs="?", **{k: v for k, v in kwargs.items() if k != "nargs"})
        return parser

    def values(self, node: ast.expr, tree: ast.Module) -> list[Any] | None:
        if isinstance(node, ast.Constant):
            return [node.value]
        if isinstance(node, (ast.Tuple, ast.List)):
            items: list[Any] = []
            for element in node.elts:
                part = self.values(element.value if isinstance(element, ast.Starred) else element, tree)
                if part is None:
                    return None
                items += part
            return items
        if isinstance(node, ast.Dict):
            return self.values(ast.Tuple(elts=[key for key in node.keys if key is not None]), tree)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("list", "sorted", "tuple") \
                and len(node.args) == 1:
            return self.values(node.args[0], tree)
        if isinstance(node, ast.Name):
            return self.named(node.id, tree)
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            module = self.imported_module(node.value.id, tree)
            return self.named(node.attr, module) if module else None
        return None

    def named(self, name: str, tree: ast.Module) -> list[Any] | None:
        for statement in tree.body:
            if isinstance(statement, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in statement.targets):
                return self.values(statement.value, tree)
            if isinstance(statement, ast.AnnAssign) and isinstance(statement.target, ast.Name) \
                    and statement.target.id == name and statement.value is not None:
                return self.values(statement.value, tree)
            if isinstance(statement, ast.ImportFrom) and statement.module and statement.level == 0 \
                    and any((alias.asname or alias.name) == name for alias in statement.names):
                sibling = self.folder / f"{statement.module}.py"
                if sibling.is_file():
                    return self.named(name, ast.parse(sibling.read_text(encoding="utf-8")))
        return None

    def imported_module(self, alias_name: str, tree: ast.Module) -> ast.Module | None:
        for statement in tree.body:
            if isinstance(statement, ast.Import):
                for alias in statement.names:
                    if (alias.asname or alias.name) == alias_name and (self.folder / f"{alias.name}.py").is_file():
                        return ast.parse((self.folder / f"{alias.name}.py").read_text(encoding="utf-8"))
        return None
