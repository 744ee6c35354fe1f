"""CEL compile-time checks as kube-apiserver runs them on a CRD's `x-kubernetes-validations`, against the CEL types
of the schema nodes (`cel_types`): a parsed and macro-expanded AST (cel-go's macros) and a type checker that reports cel-go's errors (undefined field, undeclared reference, no matching overload, result not bool/string).

cel-python parses; it has no type checker, so the checking is ours. The function library covered is the standard one
plus the Kubernetes string and list extensions listed in `_FUNCTIONS`; anything else is an "undeclared reference", as
it would be on a server that lacks the function (the README lists this). Wording follows cel-go; columns and the
caret line are cel-go's (1-based column, position of the operator, `.`, `(` or `[`).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import celpy
import lark
from celpy.evaluation import celbytes, celstr

from tests.kube.cel_types import (
    BOOL,
    BYTES,
    DOUBLE,
    DYN,
    INT,
    NULL,
    NUMERIC,
    RESERVED,
    STRING,
    TYPE,
    UINT,
    CelType,
    elem_of,
    key_of,
    list_of,
)

ACCUMULATOR = "@result"


# --------------------------------------------------------------------------------------------------------- the AST


@dataclass(eq=False)
class Expr:
    """One node of the checked AST; `kind` is literal, ident, select, call, list, map or comprehension."""

    kind: str
    offset: int  # where errors about this node point (cel-go's location)
    value: Any = None  # literal value (str for strings, int, float, bool, bytes, None)
    name: str = ""  # ident name, selected field, function name, comprehension macro
    args: list[Expr] = field(default_factory=list)  # call arguments, list items, map keys/values interleaved
    target: Expr | None = None  # select operand, member call receiver
    test_only: bool = False  # has(select)
    iter_var: str = ""
    iter_range: Expr | None = None
    accu_init: Expr | None = None
    loop_cond: Expr | None = None
    loop_step: Expr | None = None
    result: Expr | None = None
    user_args: list[Expr] = field(default_factory=list)  # a macro's predicate/transform, as written
    type: CelType = DYN
    overload: str = ""  # the overload the checker chose (the cost estimator switches on it)

    def children(self) -> Iterator[Expr]:
        parts = [self.target, *self.args, self.iter_range, self.accu_init, self.loop_cond, self.loop_step, self.result]
        return (part for part in parts if part is not None)


class CelCompileError(Exception):
    """cel-go's `issues.String()`: one `ERROR: <input>:line:col: message` block per issue."""


_BINARY = {
    "relation_lt": "_<_",
    "relation_le": "_<=_",
    "relation_gt": "_>_",
    "relation_ge": "_>=_",
    "relation_eq": "_==_",
    "relation_ne": "_!=_",
    "relation_in": "@in",
    "addition_add": "_+_",
    "addition_sub": "_-_",
    "multiplication_mul": "_*_",
    "multiplication_div": "_/_",
    "multiplication_mod": "_%_",
}
_OPERATOR_TEXT = {"_||_": "||", "_&&_": "&&", "_?_:_": "?", "@in": "in"} | {
    function: function.strip("_") for function in _BINARY.values() if function != "@in"
}


class _Builder:
    """celpy's lark tree -> `Expr`, with cel-go's macros expanded into comprehensions."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.issues: list[tuple[int, str]] = []

    def build(self, tree: lark.Tree) -> Expr:
        data, kids = tree.data, tree.children
        if (
            data in ("expr", "conditionalor", "conditionaland", "relation", "addition", "multiplication")
            and len(kids) == 1
        ):
            return self.build(_tree(kids[0]))
        if data == "expr":
            condition, if_true, if_false = (self.build(_tree(kid)) for kid in kids)
            return self._call("_?_:_", [condition, if_true, if_false], self._find("?", condition))
        if data in ("conditionalor", "conditionaland"):
            left, right = self.build(_tree(kids[0])), self.build(_tree(kids[1]))
            function = "_||_" if data == "conditionalor" else "_&&_"
            return self._call(function, [left, right], self._find(_OPERATOR_TEXT[function], left))
        if data in ("relation", "addition", "multiplication"):
            operator_tree = _tree(kids[0])
            left = self.build(_tree(operator_tree.children[0]))
            right = self.build(_tree(kids[1]))
            function = _BINARY[operator_tree.data]
            return self._call(function, [left, right], self._find(_OPERATOR_TEXT[function], left))
        if data == "unary":
            if len(kids) == 1:
                return self.build(_tree(kids[0]))
            operator_tree, operand_tree = _tree(kids[0]), _tree(kids[1])
            function = "!_" if operator_tree.data == "unary_not" else "-_"
            operand = self.build(operand_tree)
            if function == "-_" and operand.kind == "literal" and type(operand.value) in (int, float):
                return Expr("literal", _start(operator_tree), value=-operand.value, type=operand.type)
            return self._call(function, [operand], _start(operator_tree))
        if data in ("member", "primary", "paren_expr"):
            return self.build(_tree(kids[0]))
        if data == "member_dot":
            operand = self.build(_tree(kids[0]))
            name = _token(kids[1])
            return Expr("select", self._dot_before(name), name=str(name), target=operand)
        if data == "member_dot_arg":
            receiver = self.build(_tree(kids[0]))
            name = _token(kids[1])
            args = self._exprlist(kids[2:])
            return self._member_call(str(name), receiver, args, self._paren_after(name))
        if data == "member_index":
            operand = self.build(_tree(kids[0]))
            index = self.build(_tree(kids[1]))
            return self._call("_[_]", [operand, index], self._find("[", operand))
        if data == "ident_arg":
            name = _token(kids[0])
            args = self._exprlist(kids[1:])
            return self._global_call(str(name), args, self._paren_after(name))
        if data == "ident":
            token = _token(kids[0])
            return Expr("ident", _pos(token), name=str(token))
        if data == "literal":
            return self._literal(_token(kids[0]))
        if data == "list_lit":
            return Expr("list", _start(tree), args=self._exprlist(kids))
        if data == "map_lit":
            entries = [self.build(_tree(kid)) for kid in _tree(kids[0]).children] if kids else []
            return Expr("map", _start(tree), args=entries)
        self.issues.append((_start(tree), f"unsupported syntax: {data}"))
        return Expr("literal", _start(tree), value=None, type=NULL)

    def _exprlist(self, kids: list[Any]) -> list[Expr]:
        return [self.build(_tree(kid)) for kid in _tree(kids[0]).children] if kids else []

    @staticmethod
    def _call(function: str, args: list[Expr], offset: int, target: Expr | None = None) -> Expr:
        return Expr("call", offset, name=function, args=args, target=target)

    def _literal(self, token: lark.Token) -> Expr:
        offset = _pos(token)
        kind = token.type
        if kind == "INT_LIT":
            return Expr("literal", offset, value=int(token.value, 0), type=INT)
        if kind == "UINT_LIT":
            return Expr("literal", offset, value=int(token.value[:-1], 0), type=UINT)
        if kind == "FLOAT_LIT":
            return Expr("literal", offset, value=float(token.value), type=DOUBLE)
        if kind in ("STRING_LIT", "MLSTRING_LIT"):
            return Expr("literal", offset, value=str(celstr(token)), type=STRING)
        if kind == "BYTES_LIT":
            return Expr("literal", offset, value=bytes(celbytes(token)), type=BYTES)
        if kind == "BOOL_LIT":
            return Expr("literal", offset, value=token.value == "true", type=BOOL)
        return Expr("literal", offset, value=None, type=NULL)

    def _global_call(self, name: str, args: list[Expr], offset: int) -> Expr:
        if name == "has":
            if len(args) != 1 or args[0].kind != "select":
                self.issues.append((offset, "invalid argument to has() macro"))
                return Expr("literal", offset, value=False, type=BOOL)
            return Expr("select", args[0].offset, name=args[0].name, target=args[0].target, test_only=True)
        return self._call(name, args, offset)

    def _member_call(self, name: str, receiver: Expr, args: list[Expr], offset: int) -> Expr:
        macro_arity = {"all": (2,), "exists": (2,), "exists_one": (2,), "map": (2, 3), "filter": (2,)}
        if name not in macro_arity or len(args) not in macro_arity[name]:
            return self._call(name, args, offset, target=receiver)
        if args[0].kind != "ident":
            self.issues.append((args[0].offset, "argument must be a simple name"))
            return Expr("literal", offset, value=False, type=BOOL)
        return _comprehension(name, receiver, args[0].name, args[1:], offset)

    # Positions: cel-go points at the operator, the `.` of a select, the `(` of a call, the `[` of an index.
    def _find(self, text: str, left: Expr) -> int:
        found = self.source.find(text, _end(left, self.source))
        return found if found >= 0 else left.offset

    def _dot_before(self, token: lark.Token) -> int:
        found = self.source.rfind(".", 0, _pos(token))
        return found if found >= 0 else _pos(token)

    def _paren_after(self, token: lark.Token) -> int:
        found = self.source.find("(", _pos(token) + len(token))
        return found if found >= 0 else _pos(token)


def _comprehension(macro: str, iter_range: Expr, var: str, user: list[Expr], offset: int) -> Expr:
    """cel-go's macro expansions (parser/macro.go), which its cost estimator walks."""

    def accu() -> Expr:
        return Expr("ident", offset, name=ACCUMULATOR)

    def call(function: str, *args: Expr) -> Expr:
        return Expr("call", offset, name=function, args=list(args))

    def literal(value: Any, cel_type: CelType) -> Expr:
        return Expr("literal", offset, value=value, type=cel_type)

    def append(item: Expr) -> Expr:
        return call("_+_", accu(), Expr("list", offset, args=[item]))

    predicate = user[0]
    if macro == "all":
        init, cond = literal(True, BOOL), call("@not_strictly_false", accu())
        step, result = call("_&&_", accu(), predicate), accu()
    elif macro == "exists":
        init, cond = literal(False, BOOL), call("@not_strictly_false", call("!_", accu()))
        step, result = call("_||_", accu(), predicate), accu()
    elif macro == "exists_one":
        init, cond = literal(0, INT), literal(True, BOOL)
        step = call("_?_:_", predicate, call("_+_", accu(), literal(1, INT)), accu())
        result = call("_==_", accu(), literal(1, INT))
    elif macro == "filter":
        init, cond, result = Expr("list", offset), literal(True, BOOL), accu()
        step = call("_?_:_", predicate, append(Expr("ident", offset, name=var)), accu())
    else:  # map(x, f) or map(x, p, f)
        init, cond, result = Expr("list", offset), literal(True, BOOL), accu()
        step = append(user[-1]) if len(user) == 1 else call("_?_:_", predicate, append(user[-1]), accu())
    return Expr(
        "comprehension",
        offset,
        name=macro,
        iter_var=var,
        iter_range=iter_range,
        accu_init=init,
        loop_cond=cond,
        loop_step=step,
        result=result,
        user_args=user,
    )


def _tree(node: Any) -> lark.Tree:
    assert isinstance(node, lark.Tree), node
    return node


def _token(node: Any) -> lark.Token:
    assert isinstance(node, lark.Token), node
    return node


def _pos(token: lark.Token) -> int:
    return token.start_pos or 0


def _start(tree: lark.Tree) -> int:
    return tree.meta.start_pos if not tree.meta.empty else 0


def _end(expr: Expr, source: str) -> int:
    """Just past the source text of `expr` (the furthest offset of any node under it)."""
    furthest = max([expr.offset, *(_end(child, source) for child in expr.children())])
    return min(furthest + 1, len(source))


# ------------------------------------------------------------------------------------------------------ the checker

# name -> (receiver kind or "" for a global, argument kinds, result kind); "A" is the receiver's element type.
_FUNCTIONS: dict[str, list[tuple[str, tuple[str, ...], str]]] = {
    "size": [("", ("string",), "int"), ("", ("bytes",), "int"), ("", ("list",), "int"), ("", ("map",), "int")]
    + [("string", (), "int"), ("bytes", (), "int"), ("list", (), "int"), ("map", (), "int")],
    "matches": [("string", ("string",), "bool"), ("", ("string", "string"), "bool")],
    "startsWith": [("string", ("string",), "bool")],
    "endsWith": [("string", ("string",), "bool")],
    "contains": [("string", ("string",), "bool")],
    "lowerAscii": [("string", (), "string")],
    "upperAscii": [("string", (), "string")],
    "trim": [("string", (), "string")],
    "substring": [("string", ("int",), "string"), ("string", ("int", "int"), "string")],
    "charAt": [("string", ("int",), "string")],
    "replace": [("string", ("string", "string"), "string"), ("string", ("string", "string", "int"), "string")],
    "split": [("string", ("string",), "list_string"), ("string", ("string", "int"), "list_string")],
    "join": [("list", (), "string"), ("list", ("string",), "string")],
    "indexOf": [("string", ("string",), "int"), ("string", ("string", "int"), "int"), ("list", ("A",), "int")],
    "lastIndexOf": [("string", ("string",), "int"), ("list", ("A",), "int")],
    "find": [("string", ("string",), "string")],
    "findAll": [("string", ("string",), "list_string"), ("string", ("string", "int"), "list_string")],
    "isSorted": [("list", (), "bool")],
    "sum": [("list", (), "A")],
    "min": [("list", (), "A")],
    "max": [("list", (), "A")],
    "int": [("", ("int",), "int"), ("", ("uint",), "int"), ("", ("double",), "int"), ("", ("string",), "int")],
    "uint": [("", ("int",), "uint"), ("", ("uint",), "uint"), ("", ("double",), "uint"), ("", ("string",), "uint")],
    "double": [("", (kind,), "double") for kind in ("int", "uint", "double", "string")],
    "string": [("", (kind,), "string") for kind in ("int", "uint", "double", "string", "bool", "bytes")],
    "bool": [("", ("bool",), "bool"), ("", ("string",), "bool")],
    "bytes": [("", ("string",), "bytes"), ("", ("bytes",), "bytes")],
    "dyn": [("", ("*",), "dyn")],
    "type": [("", ("*",), "type")],
    "@not_strictly_false": [("", ("bool",), "bool")],
}
_RESULT_TYPES = {
    "int": INT,
    "uint": UINT,
    "double": DOUBLE,
    "string": STRING,
    "bool": BOOL,
    "bytes": BYTES,
    "dyn": DYN,
    "type": TYPE,
    "list_string": list_of(STRING),
}


class _Checker:
    def __init__(self, variables: Mapping[str, CelType]) -> None:
        self.scopes: list[dict[str, CelType]] = [dict(variables)]
        self.issues: list[tuple[int, str]] = []

    def lookup(self, name: str) -> CelType | None:
        for scope in reversed(self.scopes):
            if name in scope:
                return scope[name]
        return None

    def check(self, expr: Expr) -> CelType:
        expr.type = self._check(expr)
        return expr.type

    def _check(self, expr: Expr) -> CelType:
        if expr.kind == "literal":
            return expr.type
        if expr.kind == "ident":
            found = self.lookup(expr.name)
            if found is None:
                self.issues.append((expr.offset, f"undeclared reference to '{expr.name}' (in container '')"))
                return DYN
            return found
        if expr.kind == "select":
            assert expr.target is not None
            operand = self.check(expr.target)
            selected = self._select(operand, expr)
            return BOOL if expr.test_only else selected
        if expr.kind == "list":
            items = [self.check(item) for item in expr.args]
            elem = items[0] if items and all(item.same(items[0]) for item in items) else DYN
            return list_of(elem)
        if expr.kind == "map":
            parts = [self.check(part) for part in expr.args]
            keys, values = parts[0::2], parts[1::2]
            key = keys[0] if keys and all(k.same(keys[0]) for k in keys) else DYN
            value = values[0] if values and all(v.same(values[0]) for v in values) else DYN
            return CelType("map", key=key, elem=value, min_size=2)
        if expr.kind == "comprehension":
            return self._comprehension(expr)
        return self._call(expr)

    def _select(self, operand: CelType, expr: Expr) -> CelType:
        if operand.kind == "object":
            name = expr.name
            if name not in operand.fields and name in RESERVED:
                name = f"__{name}__"  # Kubernetes 1.32+ also accepts a keyword as a field name
            if name not in operand.fields:
                self.issues.append((expr.offset, f"undefined field '{expr.name}'"))
                return DYN
            return operand.fields[name]
        if operand.kind == "map":
            return elem_of(operand)
        if operand.kind == "dyn":
            return DYN
        self.issues.append((expr.offset, f"type '{operand}' does not support field selection"))
        return DYN

    def _comprehension(self, expr: Expr) -> CelType:
        assert expr.iter_range and expr.accu_init and expr.loop_cond and expr.loop_step and expr.result
        range_type = self.check(expr.iter_range)
        if range_type.kind == "list":
            var_type = elem_of(range_type)
        elif range_type.kind == "map":
            var_type = key_of(range_type)
        else:
            if range_type.kind != "dyn":
                self.issues.append(
                    (
                        expr.iter_range.offset,
                        f"expression of type '{range_type}' cannot be range of a comprehension"
                        + " (must be list, map, or dynamic)",
                    )
                )
            var_type = DYN
        self.scopes.append({expr.iter_var: var_type})
        user_types = [self.check(arg) for arg in expr.user_args]
        if expr.name == "map":
            accu_type = list_of(user_types[-1])
        elif expr.name == "filter":
            accu_type = list_of(var_type)
        else:
            accu_type = INT if expr.name == "exists_one" else BOOL
        self.scopes.append({ACCUMULATOR: accu_type})
        for part in (expr.accu_init, expr.loop_cond, expr.loop_step):
            self.check(part)
        self.scopes.pop()
        self.scopes.pop()
        self.scopes.append({ACCUMULATOR: accu_type})
        result = self.check(expr.result)
        self.scopes.pop()
        return result

    def _call(self, expr: Expr) -> CelType:
        args = [self.check(arg) for arg in expr.args]
        receiver = self.check(expr.target) if expr.target is not None else None
        function = expr.name
        kinds = [arg.kind for arg in args]
        result: CelType | None = None
        if function in ("_||_", "_&&_"):
            if all(kind in ("bool", "dyn") for kind in kinds):
                result, expr.overload = BOOL, "logical_or" if function == "_||_" else "logical_and"
        elif function == "!_":
            if kinds[0] in ("bool", "dyn"):
                result, expr.overload = BOOL, "logical_not"
        elif function == "-_":
            if kinds[0] in ("int", "double", "dyn"):
                result, expr.overload = args[0], "negate"
        elif function == "_?_:_":
            if kinds[0] in ("bool", "dyn") and args[1].same(args[2]):
                result, expr.overload = (args[1] if args[1].kind != "dyn" else args[2]), "conditional"
        elif function in ("_==_", "_!=_"):
            if args[0].same(args[1]) or "null_type" in kinds:
                result, expr.overload = BOOL, "equals" if function == "_==_" else "not_equals"
        elif function in ("_<_", "_<=_", "_>_", "_>=_"):
            result, expr.overload = self._relation(args)
        elif function in ("_+_", "_-_", "_*_", "_/_", "_%_"):
            result, expr.overload = self._arithmetic(function, args)
        elif function == "_[_]":
            if kinds[0] == "list" and kinds[1] in ("int", "dyn"):
                result, expr.overload = elem_of(args[0]), "index_list"
            elif kinds[0] == "map" and key_of(args[0]).same(args[1]):
                result, expr.overload = elem_of(args[0]), "index_map"
            elif kinds[0] == "dyn":
                result, expr.overload = DYN, "index_dyn"
        elif function == "@in":
            if kinds[1] == "list" and elem_of(args[1]).same(args[0]):
                result, expr.overload = BOOL, "in_list"
            elif kinds[1] == "map" and key_of(args[1]).same(args[0]):
                result, expr.overload = BOOL, "in_map"
            elif kinds[1] == "dyn":
                result, expr.overload = BOOL, "in_dyn"
        elif function in _FUNCTIONS:
            result = self._library(function, receiver, args, expr)
        else:
            self.issues.append((expr.offset, f"undeclared reference to '{function}' (in container '')"))
            return DYN
        if result is None:
            applied = f"({', '.join(str(arg) for arg in args)})"
            if receiver is not None:
                applied = f"{receiver}.{applied}"
            self.issues.append((expr.offset, f"found no matching overload for '{function}' applied to '{applied}'"))
            return DYN
        return result

    @staticmethod
    def _relation(args: list[CelType]) -> tuple[CelType | None, str]:
        left, right = args[0].kind, args[1].kind
        if left in NUMERIC and right in NUMERIC or "dyn" in (left, right):
            return BOOL, "less_numeric"
        if left == right and left in ("string", "bytes", "bool", "timestamp", "duration"):
            return BOOL, f"less_{left}"
        return None, ""

    @staticmethod
    def _arithmetic(function: str, args: list[CelType]) -> tuple[CelType | None, str]:
        left, right = args[0], args[1]
        if "dyn" in (left.kind, right.kind):
            return (right if left.kind == "dyn" else left), "arithmetic_dyn"
        if left.kind == right.kind and left.kind in NUMERIC:
            if function == "_%_" and left.kind == "double":
                return None, ""
            return left, "arithmetic_numeric"
        if function == "_+_" and left.kind == right.kind and left.kind in ("string", "bytes", "list"):
            if left.kind == "list":
                return list_of(elem_of(left) if elem_of(left).same(elem_of(right)) else DYN), "add_list"
            return left, f"add_{left.kind}"
        return None, ""

    @staticmethod
    def _library(function: str, receiver: CelType | None, args: list[CelType], expr: Expr) -> CelType | None:
        for receiver_kind, arg_kinds, result_kind in _FUNCTIONS[function]:
            if (receiver_kind == "") != (receiver is None) or len(arg_kinds) != len(args):
                continue
            if receiver is not None and receiver.kind not in (receiver_kind, "dyn"):
                continue
            element = elem_of(receiver) if receiver is not None else DYN
            if all(
                wanted == "*" or arg.kind in (wanted, "dyn") or (wanted == "A" and element.same(arg))
                for wanted, arg in zip(arg_kinds, args, strict=True)
            ):
                if function == "join" and receiver is not None and elem_of(receiver).kind not in ("string", "dyn"):
                    continue
                expr.overload = f"{function}_{receiver_kind or '_'.join(arg_kinds)}"
                return element if result_kind == "A" else _RESULT_TYPES[result_kind]
        return None


@dataclass
class Compiled:
    """A checked expression: the AST the cost estimator walks, its type, and the source."""

    ast: Expr
    type: CelType
    source: str
    uses_old_self: bool


def compile_expression(source: str, variables: Mapping[str, CelType]) -> Compiled:
    """Parse, expand macros and type-check `source`; raises CelCompileError with cel-go's issue text."""
    try:
        tree = celpy.Environment().compile(source)
    except celpy.CELParseError as error:
        line, column = getattr(error, "line", None) or 1, getattr(error, "column", None) or 1
        offset = _offset_of(source, line, column - 1)
        found = re.match(r"\S+", source[offset:])
        near = repr(found.group()) if found else "'<EOF>'"
        raise CelCompileError(_format(source, [(offset, f"Syntax error: mismatched input {near}")])) from None
    builder = _Builder(source)
    ast = builder.build(tree)
    checker = _Checker(variables)
    result = checker.check(ast)
    issues = builder.issues + checker.issues
    if issues:
        raise CelCompileError(_format(source, issues))
    uses_old_self = any(node.kind == "ident" and node.name == "oldSelf" for node in walk(ast))
    return Compiled(ast, result, source, uses_old_self)


def walk(expr: Expr) -> Iterator[Expr]:
    yield expr
    for child in expr.children():
        yield from walk(child)


def literal_regex_errors(compiled: Compiled) -> list[tuple[int, str]]:
    """cel.ValidateRegexLiterals (Kubernetes 1.29+): a literal pattern passed to matches/find/findAll must compile."""
    issues = []
    for node in walk(compiled.ast):
        if node.kind == "call" and node.name in ("matches", "find", "findAll") and node.args:
            pattern = node.args[-1] if node.name == "matches" else node.args[0]
            if pattern.kind == "literal" and isinstance(pattern.value, str):
                try:
                    re.compile(pattern.value)
                except re.error as error:
                    issues.append((pattern.offset, f"invalid matches argument: error parsing regexp: {error}"))
    return issues


def format_issues(source: str, issues: list[tuple[int, str]]) -> str:
    return _format(source, issues)


def _format(source: str, issues: list[tuple[int, str]]) -> str:
    blocks = []
    lines = source.split("\n")
    for offset, message in sorted(issues, key=lambda issue: issue[0]):
        line = source.count("\n", 0, offset)
        column = offset - (source.rfind("\n", 0, offset) + 1)
        blocks.append(f"ERROR: <input>:{line + 1}:{column + 1}: {message}\n | {lines[line]}\n | {'.' * column}^")
    return "\n".join(blocks)


def _offset_of(source: str, line: int, column: int) -> int:
    starts = [0] + [index + 1 for index, char in enumerate(source) if char == "\n"]
    return min(starts[min(line, len(starts)) - 1] + max(column, 0), len(source))
