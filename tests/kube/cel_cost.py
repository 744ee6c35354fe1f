"""The static cost estimate kube-apiserver computes for each CEL rule of a CRD (cel-go checker/cost.go with the
Kubernetes size estimator and library costs), so the emulator refuses the rules a real server refuses.

A rule's estimated cost is the worst case of its expression, with unbounded strings, lists and maps sized from the
3 MiB request limit (`cel_types.schema_decl_type`). The apiextensions validation multiplies it by the largest number
of times the rule's node can occur (the product of the enclosing maxItems/maxProperties, or a worst case from the
request size when one of them is unbounded) and refuses a rule over 10,000,000 or a CRD whose rules total more than
100,000,000. Costs of functions outside `cel_check._FUNCTIONS` are not modelled (they do not compile here).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from tests.kube.cel_check import ACCUMULATOR, Compiled, Expr
from tests.kube.cel_types import CelType

PER_RULE_LIMIT = 10_000_000  # StaticEstimatedCostLimit
PER_CRD_LIMIT = 100_000_000  # StaticEstimatedCRDCostLimit
MAX_UINT = 2**64 - 1
_STRING_TRAVERSAL = 0.1
_REGEX_LENGTH = 0.25
_SCALARS = ("bool", "double", "duration", "int", "timestamp", "uint")


@dataclass(frozen=True)
class Range:
    """A [min, max] estimate of a size or a cost, saturating at 2**64-1 like cel-go's uint64 arithmetic."""

    min: int
    max: int

    def __add__(self, other: Range) -> Range:
        return Range(min(self.min + other.min, MAX_UINT), min(self.max + other.max, MAX_UINT))

    def __mul__(self, other: Range) -> Range:
        return Range(min(self.min * other.min, MAX_UINT), min(self.max * other.max, MAX_UINT))

    def factor(self, per_unit: float) -> Range:
        return Range(_ceil(self.min * per_unit), _ceil(self.max * per_unit))

    def union(self, other: Range) -> Range:
        return Range(min(self.min, other.min), max(self.max, other.max))


def _ceil(value: float) -> int:
    return MAX_UINT if value >= 2.0**64 else min(math.ceil(value), MAX_UINT)


UNKNOWN = Range(0, MAX_UINT)
ZERO = Range(0, 0)
ONE = Range(1, 1)


@dataclass(frozen=True)
class _Entries:
    """Sizes of a container's keys and values, known for literals and values derived from them."""

    container: str  # list | map
    key: Range
    value: Range


@dataclass(frozen=True)
class _Local:
    path: tuple[str, ...]
    size: Range | None
    entries: _Entries | None


def expression_cost(compiled: Compiled, self_type: CelType) -> int:
    """The worst-case cost of one evaluation (cel.EstimateCost's Max)."""
    return _Coster(self_type).cost(compiled.ast).max


def max_cardinality(min_serialized_size: int) -> int:
    """How many times a value of this minimum size fits in one request (apiextensions' maxCardinality)."""
    return (3 * 1024 * 1024) // (min_serialized_size + 1)


class _Coster:
    def __init__(self, root: CelType) -> None:
        self.root = root
        self.paths: dict[int, tuple[str, ...]] = {}
        self.sizes: dict[int, Range] = {}
        self.entries: dict[int, _Entries] = {}
        self.locals: dict[str, list[_Local]] = {}

    # ------------------------------------------------------------------------------------------- expressions

    def cost(self, expr: Expr) -> Range:
        if expr.kind == "literal":
            return ZERO
        if expr.kind == "ident":
            local = self._local(expr.name)
            self.paths[id(expr)] = local.path if local is not None else (expr.name,)
            return ONE
        if expr.kind == "select":
            assert expr.target is not None
            if expr.test_only:  # has(): Kubernetes sets PresenceTestHasCost(false)
                return self.cost(expr.target)
            total = self.cost(expr.target)
            if expr.target.type.kind in ("map", "object"):
                total = total + ONE
            self.paths[id(expr)] = (*self.path(expr.target), expr.name)
            return total
        if expr.kind == "list":
            return self._create(expr, "list", base=10)
        if expr.kind == "map":
            return self._create(expr, "map", base=30)
        if expr.kind == "comprehension":
            return self._comprehension(expr)
        return self._call(expr)

    def _create(self, expr: Expr, container: str, base: int) -> Range:
        total = Range(base, base)
        items = expr.args if container == "list" else expr.args[1::2]
        keys = expr.args[0::2] if container == "map" else []
        for part in expr.args:
            total = total + self.cost(part)
        value_size = _union_all([self.size_or_unknown(item) for item in items])
        key_size = _union_all([self.size_or_unknown(key) for key in keys]) if container == "map" else ONE
        self.entries[id(expr)] = _Entries(container, key_size, value_size)
        return total

    def _comprehension(self, expr: Expr) -> Range:
        assert expr.iter_range and expr.accu_init and expr.loop_cond and expr.loop_step and expr.result
        total = self.cost(expr.iter_range) + self.cost(expr.accu_init)
        self._push(
            ACCUMULATOR, _Local(self.path(expr.accu_init), self.size(expr.accu_init), self.entry(expr.accu_init))
        )
        range_entries = self.entry(expr.iter_range)
        container = range_entries.container if range_entries else expr.iter_range.type.kind
        is_list = container == "list"
        var_size = (range_entries.value if is_list else range_entries.key) if range_entries else None
        var_path = (*self.path(expr.iter_range), "@items" if is_list else "@keys")
        self._push(expr.iter_var, _Local(var_path, var_size, None))
        loop = self.cost(expr.loop_cond)
        step = self.cost(expr.loop_step)
        self._pop(expr.iter_var)
        total = total + self.cost(expr.result)
        self._pop(ACCUMULATOR)
        count = self.size_or_unknown(expr.iter_range)
        total = total + count * (step + loop)
        if expr.accu_init.kind == "literal":
            init_size = self.size(expr.accu_init)
            if init_size is not None:
                self.sizes[id(expr)] = init_size
        else:
            self.sizes[id(expr)] = count
            step_entries = self.entry(expr.loop_step)
            if step_entries is not None:
                self.entries[id(expr)] = step_entries
        return total

    def _call(self, expr: Expr) -> Range:
        if expr.name == "dyn":
            inner = self.cost(expr.args[0])
            self._copy_sizes(expr, expr.args[0])
            return ONE + inner
        arg_costs = [self.cost(arg) for arg in expr.args]
        if not expr.overload:
            return ZERO
        total = ZERO
        if expr.target is not None:
            total = total + self.cost(expr.target)
        function_cost, result_size = self._function(expr, arg_costs)
        if expr.overload in ("index_list", "index_map"):
            entries = self.entry(expr.args[0])
            result_size = entries.value if entries else None
            suffix = "@items" if expr.overload == "index_list" else "@values"
            self.paths[id(expr)] = (*self.path(expr.args[0]), suffix)
        if result_size is None:
            result_size = self.size(expr)
        if result_size is not None:
            self.sizes[id(expr)] = result_size
        return total + function_cost

    def _function(self, expr: Expr, arg_costs: list[Range]) -> tuple[Range, Range | None]:
        args_total = _sum(arg_costs)
        library = self._kubernetes_library(expr)
        if library is not None:
            return library[0] + args_total, library[1]
        overload, args, target = expr.overload, expr.args, expr.target
        if overload in ("startsWith_string", "endsWith_string"):
            return self.size_or_unknown(args[0]).factor(_STRING_TRAVERSAL) + args_total, None
        if overload == "in_list":
            return self.size_or_unknown(args[1]) + args_total, None
        if overload == "matches_string" and target is not None:
            text = (self.size_or_unknown(target) + ONE).factor(_STRING_TRAVERSAL)
            return text * self.size_or_unknown(args[0]).factor(_REGEX_LENGTH) + args_total, None
        if overload == "contains_string" and target is not None:
            text = self.size_or_unknown(target).factor(_STRING_TRAVERSAL)
            return text * self.size_or_unknown(args[0]).factor(_STRING_TRAVERSAL) + args_total, None
        if overload in ("logical_or", "logical_and"):
            return Range(arg_costs[0].min, (arg_costs[0] + arg_costs[1]).max), None
        if overload == "conditional":
            size = self.size_or_unknown(args[1]).union(self.size_or_unknown(args[2]))
            left, right = self.entry(args[1]), self.entry(args[2])
            if left is not None and right is not None:
                self.entries[id(expr)] = _Entries(
                    left.container, left.key.union(right.key), left.value.union(right.value)
                )
            return arg_costs[0] + arg_costs[1].union(arg_costs[2]), size
        if overload in ("add_string", "add_bytes", "add_list"):
            size = self.size_or_unknown(args[0]) + self.size_or_unknown(args[1])
            left, right = self.entry(args[0]), self.entry(args[1])
            if left is not None and right is not None:
                self.entries[id(expr)] = _Entries(
                    left.container, left.key.union(right.key), left.value.union(right.value)
                )
            if overload == "add_list":
                return ONE + args_total, size
            return size.factor(_STRING_TRAVERSAL) + args_total, size
        if overload in ("equals", "not_equals", "less_string", "less_bytes"):
            smallest = min(self.size_or_unknown(args[0]).max, self.size_or_unknown(args[1]).max)
            return Range(1 if smallest > 0 else 0, smallest).factor(_STRING_TRAVERSAL) + args_total, None
        return ONE + args_total, None

    def _kubernetes_library(self, expr: Expr) -> tuple[Range, Range | None] | None:
        """apiserver/pkg/cel/library/cost.go for the Kubernetes functions the checker knows."""
        target, function = expr.target, expr.name
        if target is None:
            return None
        if function in ("isSorted", "sum", "max", "min", "indexOf", "lastIndexOf"):
            if target.type.kind == "list":
                element = self._element_size(target)
                per_element = ONE if element is None else ONE + element.factor(_STRING_TRAVERSAL)
                return self.size_or_unknown(target) * per_element, None
            return self.size_or_unknown(target).factor(_STRING_TRAVERSAL), None
        size = self.size_or_unknown(target)
        if function in ("lowerAscii", "upperAscii", "substring", "trim"):
            return size.factor(_STRING_TRAVERSAL), size
        if function == "replace":
            return size.factor(2 * _STRING_TRAVERSAL), None
        if function == "split":
            return size.factor(2 * _STRING_TRAVERSAL), Range(0, size.max)
        if function == "join":
            element = self._element_size(target) or UNKNOWN
            joined = size * element
            if expr.args:
                separators = Range(max(size.min - 1, 0), max(size.max - 1, 0))
                joined = joined + self.size_or_unknown(expr.args[0]) * separators
            return joined.factor(_STRING_TRAVERSAL), joined
        if function in ("find", "findAll") and expr.args:
            text = (size + ONE).factor(_STRING_TRAVERSAL)
            return text * self.size_or_unknown(expr.args[0]).factor(_REGEX_LENGTH), Range(0, size.max)
        return None

    def _element_size(self, target: Expr) -> Range | None:
        """The size of a list's items, for string/bytes items (library cost.go's listElementNode)."""
        element = target.type.elem
        if element is None or element.kind not in ("string", "bytes"):
            return None
        path = self.path(target)
        found = self._estimate_path((*path, "@items")) if path else None
        return found or UNKNOWN

    # ----------------------------------------------------------------------------------------------- sizes

    def path(self, expr: Expr) -> tuple[str, ...]:
        if expr.kind == "ident":
            local = self._local(expr.name)
            if local is not None:
                return local.path
        return self.paths.get(id(expr), ())

    def size(self, expr: Expr) -> Range | None:
        if id(expr) in self.sizes:
            return self.sizes[id(expr)]
        literal = _literal_size(expr)
        if literal is not None:
            return literal
        estimated = self._estimate_path(self.path(expr))
        if estimated is not None:
            self.sizes[id(expr)] = estimated
            return estimated
        if expr.type.kind in _SCALARS:
            return ONE
        if expr.kind == "ident":
            local = self._local(expr.name)
            if local is not None and local.size is not None:
                return local.size
        return None

    def size_or_unknown(self, expr: Expr) -> Range:
        return self.size(expr) or UNKNOWN

    def _estimate_path(self, path: tuple[str, ...]) -> Range | None:
        """The Kubernetes size estimator: walk the rule's schema type along the path (its first step is `self`)."""
        if not path:
            return None
        node: CelType | None = self.root
        for step in path[1:]:
            if node is None:
                return None
            if step in ("@items", "@values"):
                node = node.elem
            elif step == "@keys":
                node = node.key
            else:
                node = node.fields.get(step)
        return None if node is None else Range(0, node.max_elements)

    def entry(self, expr: Expr) -> _Entries | None:
        if id(expr) in self.entries:
            return self.entries[id(expr)]
        if expr.kind == "ident":
            local = self._local(expr.name)
            if local is not None:
                return local.entries
        return None

    def _copy_sizes(self, destination: Expr, source: Expr) -> None:
        size, entries = self.size(source), self.entry(source)
        if size is not None:
            self.sizes[id(destination)] = size
        if entries is not None:
            self.entries[id(destination)] = entries

    def _local(self, name: str) -> _Local | None:
        stack = self.locals.get(name)
        return stack[-1] if stack else None

    def _push(self, name: str, local: _Local) -> None:
        self.locals.setdefault(name, []).append(local)

    def _pop(self, name: str) -> None:
        self.locals[name].pop()


def _literal_size(expr: Expr) -> Range | None:
    if expr.kind == "literal":
        if isinstance(expr.value, (str, bytes)):
            return Range(len(expr.value), len(expr.value))
        return ONE
    if expr.kind == "list":
        return Range(len(expr.args), len(expr.args))
    if expr.kind == "map":
        return Range(len(expr.args) // 2, len(expr.args) // 2)
    return None


def _sum(costs: list[Range]) -> Range:
    total = ZERO
    for cost in costs:
        total = total + cost
    return total


def _union_all(sizes: list[Range]) -> Range:
    if not sizes:
        return ZERO
    result = Range(MAX_UINT, 0)
    for size in sizes:
        result = result.union(size)
    return result
