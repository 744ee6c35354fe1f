"""Installing a CRD runs the checks a real kube-apiserver runs at registration (tests/kube/crd_validation.py): a CRD the
server would refuse is refused with the server's 422, field paths and wording, and nothing of it is stored."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.fixtures.kube import kube  # noqa: F401 - the fixture, until tests/conftest.py registers the plugin
from tests.kube import cel_check, cel_cost, cel_types, crd_validation, schema
from tests.kube.emulator import KubeEmulator
from tests.kube.errors import ApiError
from tests.kube.fielderrors import FieldError, kubectl_lines
from tests.kube.http import KubeHttp

REPO = Path(__file__).resolve().parents[2]
BEFORE_ISSUE_18 = REPO / "tests/fixtures/crds/finetuneruns-before-issue-18.yaml"
GADGETS = "gadgets.example.dev"
SCHEMA = "spec.validation.openAPIV3Schema"
SPEC = f"{SCHEMA}.properties[spec]"
CRDS_URL = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"
BUDGET_HINT = (
    "(try simplifying the rule, or adding maxItems, maxProperties, and maxLength where arrays, maps, and strings "
    "are declared)"
)


def gadget_crd(spec_properties: dict[str, Any], **spec_schema: Any) -> dict[str, Any]:
    """A one-version CRD whose `spec` has these properties (and these extra schema keywords)."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": GADGETS},
        "spec": {
            "group": "example.dev",
            "scope": "Namespaced",
            "names": {"plural": "gadgets", "kind": "Gadget"},
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "properties": {
                                "metadata": {"type": "object"},
                                "spec": {"type": "object", "properties": spec_properties, **spec_schema},
                            },
                        }
                    },
                }
            ],
        },
    }


def refusal(kube: KubeEmulator, crd: dict[str, Any]) -> ApiError:  # noqa: F811
    """Install `crd`, expecting the server's refusal; checks that nothing of it was stored or served."""
    with pytest.raises(ApiError) as refused:
        kube.apply_crd(crd)
    name = crd["metadata"]["name"]
    assert (refused.value.code, refused.value.reason) == (422, "Invalid")
    assert refused.value.message.startswith(f'CustomResourceDefinition.apiextensions.k8s.io "{name}" is invalid: ')
    assert kube.find("customresourcedefinitions", name, None) is None
    group = crd["spec"]["group"]
    assert group not in KubeHttp(kube.url).get("/apis").body.get("groups", []), "a refused CRD is not served"
    return refused.value


# ------------------------------------------------------------------------------------------------- issue 18


def test_the_crd_as_committed_before_issue_18_is_refused_with_the_two_messages_the_real_server_gave(
    kube: KubeEmulator,  # noqa: F811
) -> None:
    error = refusal(kube, yaml.safe_load(BEFORE_ISSUE_18.read_text()))
    assert kubectl_lines(error) == [
        (
            f'* {SPEC}.properties[export].default: Invalid value: "object": no such key: types evaluating rule: '
            "must not repeat a type"
        ),
        (
            f'* {SPEC}.properties[training].default: Invalid value: "object": no such key: method evaluating rule: '
            "fp8 applies only to method qlora"
        ),
    ]


def test_defaults_are_validated_as_written_without_the_nested_defaults_a_created_object_gets(
    kube: KubeEmulator,  # noqa: F811
) -> None:
    """The same `default: {}` that registration refuses is filled in full on a create: the asymmetry issue 18 hit."""
    mode = {"type": "string", "enum": ["a", "b"], "default": "a"}
    rule = {"rule": "self.mode == 'a'", "message": "mode must be a"}
    options = {"type": "object", "properties": {"mode": mode}, "x-kubernetes-validations": [rule], "default": {}}
    error = refusal(kube, gadget_crd({"options": options}))
    assert kubectl_lines(error) == [
        (
            f'* {SPEC}.properties[options].default: Invalid value: "object": no such key: mode evaluating rule: '
            "mode must be a"
        )
    ]
    del options["default"]
    kube.apply_crd(gadget_crd({"options": {**options, "default": {"mode": "a"}}}))
    created = kube.create({"apiVersion": "example.dev/v1", "kind": "Gadget", "metadata": {"name": "g"}, "spec": {}})
    assert created["spec"] == {"options": {"mode": "a"}}


@pytest.mark.parametrize(
    "path", [REPO / "crds/kubetune.dev_finetuneruns.yaml", REPO / "charts/kubetune/crds/kubetune.dev_finetuneruns.yaml"]
)
def test_the_committed_crd_and_the_charts_copy_install(kube: KubeEmulator, path: Path) -> None:  # noqa: F811
    installed = kube.apply_crd_file(path)
    assert [crd["metadata"]["name"] for crd in installed] == ["finetuneruns.kubetune.dev"]
    assert kube.list("finetuneruns") == []


# ---------------------------------------------------------------------------- one refused CRD per check class

STRING = {"type": "string"}
UNBOUNDED_STRINGS = {"type": "array", "items": STRING}


def _rule(rule: str, **fields: Any) -> dict[str, Any]:
    return {"x-kubernetes-validations": [{"rule": rule, **fields}]}


def _with_root(crd: dict[str, Any], **properties: Any) -> dict[str, Any]:
    crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"].update(properties)
    return crd


REFUSED: list[tuple[str, dict[str, Any], str]] = [
    (
        "metadata fields beyond name and generateName",
        _with_root(gadget_crd({}), metadata={"type": "object", "properties": {"labels": {"type": "object"}}}),
        (
            f"* {SCHEMA}.properties[metadata]: Forbidden: must not specify anything other than name and generateName, "
            "but metadata is implicitly specified"
        ),
    ),
    (
        "a default that fails its own rule",
        gadget_crd({"n": {"type": "integer", "default": 0, **_rule("self > 0")}}),
        f"* {SPEC}.properties[n].default: Invalid value: 0: failed rule: self > 0",
    ),
    (
        "a default outside its enum",
        gadget_crd({"mode": {"type": "string", "enum": ["a", "b"], "default": "c"}}),
        f'* {SPEC}.properties[mode].default: Unsupported value: "c": supported values: "a", "b"',
    ),
    (
        "a default with fields the schema prunes",
        gadget_crd({"o": {"type": "object", "properties": {"a": STRING}, "default": {"a": "x", "b": "y"}}}),
        f'* {SPEC}.properties[o].default: Invalid value: {{"a":"x","b":"y"}}: must not have unknown fields',
    ),
    (
        "a property without a type (not structural)",
        gadget_crd({"loose": {"description": "anything"}}),
        f"* {SPEC}.properties[loose].type: Required value: must not be empty for specified object fields",
    ),
    (
        "properties beside additionalProperties",
        gadget_crd({"m": {"type": "object", "properties": {"a": STRING}, "additionalProperties": STRING}}),
        (
            f"* {SPEC}.properties[m].additionalProperties: Forbidden: additionalProperties and properties are mutual "
            "exclusive"
        ),
    ),
    (
        "a rule that does not compile",
        gadget_crd({"a": STRING}, **_rule("self.nope == 'x'")),
        (
            f"* {SPEC}.x-kubernetes-validations[0].rule: Invalid value: "
            '{"FieldPath":"","Message":"","MessageExpression":"","OptionalOldSelf":null,"Reason":null,'
            "\"Rule\":\"self.nope == 'x'\"}: compilation failed: ERROR: <input>:1:5: undefined field 'nope'\n"
            " | self.nope == 'x'\n"
            " | ....^"
        ),
    ),
    (
        "a rule that is not a boolean",
        gadget_crd({"a": STRING}, **_rule("self.a + 'x'")),
        (
            f"* {SPEC}.x-kubernetes-validations[0].rule: Invalid value: "
            '{"FieldPath":"","Message":"","MessageExpression":"","OptionalOldSelf":null,"Reason":null,'
            '"Rule":"self.a + \'x\'"}: cel expression must evaluate to a bool'
        ),
    ),
    (
        "a regex over unbounded strings in an unbounded list",
        gadget_crd({"names": {**UNBOUNDED_STRINGS, **_rule("self.all(n, n.matches('^[a-z]+$'))")}}),
        (
            f"* {SPEC}.properties[names].x-kubernetes-validations[0].rule: Forbidden: "
            f"estimated rule cost exceeds budget by factor of more than 100x {BUDGET_HINT}"
        ),
    ),
    (
        "a fieldPath into metadata",
        gadget_crd({"a": STRING}, **_rule("true", fieldPath=".metadata.name")),
        f'* {SPEC}.x-kubernetes-validations[0].fieldPath: Invalid value: ".metadata.name": must be a valid path',
    ),
    (
        "a fieldPath to a field that does not exist",
        gadget_crd({"a": STRING}, **_rule("true", fieldPath=".b")),
        f'* {SPEC}.x-kubernetes-validations[0].fieldPath: Invalid value: ".b": must be a valid path',
    ),
    (
        "a messageExpression that is not a string",
        gadget_crd({"a": STRING}, **_rule("true", messageExpression="1 + 1")),
        (
            f"* {SPEC}.x-kubernetes-validations[0].messageExpression: Invalid value: "
            '{"FieldPath":"","Message":"","MessageExpression":"1 + 1","OptionalOldSelf":null,"Reason":null,'
            '"Rule":"true"}: messageExpression must evaluate to a string'
        ),
    ),
    (
        "an unknown reason",
        gadget_crd({"a": STRING}, **_rule("true", reason="FieldValueBogus")),
        (
            f'* {SPEC}.x-kubernetes-validations[0].reason: Unsupported value: "FieldValueBogus": supported values: '
            '"FieldValueDuplicate", "FieldValueForbidden", "FieldValueInvalid", "FieldValueRequired"'
        ),
    ),
    (
        "oldSelf inside a list whose items cannot be correlated",
        gadget_crd(
            {"tags": {"type": "array", "maxItems": 4, "items": {**STRING, "maxLength": 8, **_rule("self == oldSelf")}}}
        ),
        (
            f'* {SPEC}.properties[tags].items.x-kubernetes-validations[0].rule: Invalid value: "self == oldSelf": '
            f"oldSelf cannot be used on the uncorrelatable portion of the schema within {SPEC}.properties[tags]"
        ),
    ),
]


@pytest.mark.parametrize(("case", "crd", "line"), REFUSED, ids=[case for case, _, _ in REFUSED])
def test_a_crd_the_server_refuses_is_refused_with_its_message_and_nothing_is_stored(
    kube: KubeEmulator,  # noqa: F811
    case: str,
    crd: dict[str, Any],
    line: str,
) -> None:
    assert line in kubectl_lines(refusal(kube, copy.deepcopy(crd))), case


def test_the_same_rule_fits_the_budget_once_the_list_and_its_strings_are_bounded(
    kube: KubeEmulator,  # noqa: F811
) -> None:
    bounded = {"type": "array", "maxItems": 64, "items": {**STRING, "maxLength": 63}}
    kube.apply_crd(gadget_crd({"names": {**bounded, **_rule("self.all(n, n.matches('^[a-z]+$'))")}}))


def test_rules_each_under_the_rule_budget_are_refused_when_the_crd_total_exceeds_its_budget(
    kube: KubeEmulator,  # noqa: F811
) -> None:
    """15 rules of about 7.2 million each: every one fits 10 million, together they pass 100 million."""
    names = {"type": "array", "maxItems": 300, "items": {**STRING, "maxLength": 10_000}}
    rule = _rule("self.all(n, n.matches('^[a-z]+(-[a-z0-9]+)*$'))")
    error = refusal(kube, gadget_crd({f"list{index:02}": {**names, **rule} for index in range(15)}))
    lines = kubectl_lines(error)
    assert lines[-1].startswith(
        f"* {SCHEMA}: Forbidden: x-kubernetes-validations estimated rule cost total for entire OpenAPIv3 schema "
        "exceeds budget by factor of 1."
    )
    contributed = [line for line in lines if "contributed to estimated rule cost total exceeding" in line]
    assert len(contributed) == 4 and len(lines) == 5


def test_a_refused_update_leaves_the_installed_crd_as_it_was(kube: KubeEmulator) -> None:  # noqa: F811
    installed = kube.apply_crd(gadget_crd({"a": STRING}))
    with pytest.raises(ApiError, match="compilation failed"):
        kube.apply_crd(gadget_crd({"a": STRING}, **_rule("self.b == 1")))
    assert kube.get("customresourcedefinitions", GADGETS, None) == installed
    moved = gadget_crd({"a": STRING})
    moved["spec"]["scope"] = "Cluster"
    with pytest.raises(ApiError, match='spec.scope: Invalid value: "Cluster": field is immutable'):
        kube.apply_crd(moved)


def test_over_http_a_refused_crd_is_a_422_status_with_one_cause_per_field(kube: KubeEmulator) -> None:  # noqa: F811
    api = KubeHttp(kube.url)
    reply = api.post(CRDS_URL, yaml.safe_load(BEFORE_ISSUE_18.read_text()))
    assert reply.status == 422 and reply.body["kind"] == "Status" and reply.body["reason"] == "Invalid"
    assert reply.body["details"]["kind"] == "CustomResourceDefinition"
    causes = reply.body["details"]["causes"]
    assert [cause["field"] for cause in causes] == [
        f"{SPEC}.properties[export].default",
        f"{SPEC}.properties[training].default",
    ]
    assert {cause["reason"] for cause in causes} == {"FieldValueInvalid"}
    assert api.get(f"{CRDS_URL}/finetuneruns.kubetune.dev").status == 404


# ------------------------------------------------------------------------------- custom resources on create


def test_a_failed_rule_is_reported_at_its_field_path_with_its_reason_and_message_expression(
    kube: KubeEmulator,  # noqa: F811
) -> None:
    rules = [
        {"rule": "self.a != 'x'", "fieldPath": ".a", "reason": "FieldValueForbidden", "message": "no x"},
        {"rule": "self.a != 'y'", "messageExpression": "'a is ' + self.a"},
    ]
    kube.apply_crd(gadget_crd({"a": STRING}, **{"x-kubernetes-validations": rules}))
    gadget = {"apiVersion": "example.dev/v1", "kind": "Gadget", "metadata": {"name": "g"}}
    with pytest.raises(ApiError) as forbidden:
        kube.create({**gadget, "spec": {"a": "x"}})
    assert "spec.a: Forbidden: no x" in forbidden.value.message
    with pytest.raises(ApiError) as expressed:
        kube.create({**gadget, "spec": {"a": "y"}})
    assert "spec: Invalid value: a is y" in expressed.value.message


def test_a_rule_at_the_root_is_reported_at_no_path(kube: KubeEmulator) -> None:  # noqa: F811
    crd = gadget_crd({"a": STRING})
    crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"].update(
        _rule("self.metadata.name.size() <= 3", message="short")
    )
    kube.apply_crd(crd)
    with pytest.raises(ApiError, match="<nil>: Invalid value: short"):
        kube.create({"apiVersion": "example.dev/v1", "kind": "Gadget", "metadata": {"name": "long"}, "spec": {}})


def test_create_prunes_unknown_fields_drops_nulls_and_fills_nested_defaults(kube: KubeEmulator) -> None:  # noqa: F811
    inner = {"type": "object", "properties": {"n": {"type": "integer", "default": 7}}, "default": {}}
    free = {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
    bare = {"type": "object"}  # no properties: a real server keeps none of its fields
    raw = {"type": "array", "x-kubernetes-preserve-unknown-fields": True, "items": {"type": "object"}}
    kube.apply_crd(
        gadget_crd({"inner": inner, "free": free, "bare": bare, "raw": raw, "a": {**STRING, "default": "d"}})
    )
    created = kube.create(
        {
            "apiVersion": "example.dev/v1",
            "kind": "Gadget",
            "metadata": {"name": "g"},
            "spec": {"unknown": 1, "a": None, "free": {"anything": [1]}, "bare": {"x": 1}, "raw": [{"kept": True}]},
            "extra": True,
        }
    )
    assert created["spec"] == {
        "a": "d",
        "free": {"anything": [1]},
        "inner": {"n": 7},
        "bare": {},
        "raw": [{"kept": True}],
    }
    assert "extra" not in created


# ------------------------------------------------------------------------------------------- the estimator


def _cost(schema: dict[str, Any], rule: str) -> int:
    self_type = cel_types.schema_decl_type(schema, is_root=False)
    assert self_type is not None
    return cel_cost.expression_cost(cel_check.compile_expression(rule, {"self": self_type}), self_type)


def test_the_estimator_sizes_unbounded_strings_from_the_request_limit_and_bounded_ones_from_max_length() -> None:
    # cel-go: (size + 1) * 0.1 for the string, times len(regex) * 0.25, plus 1 for reading `self`
    assert _cost(STRING, "self.matches('^[a-z]+$')") == 314_573 * 2 + 1
    assert _cost({**STRING, "maxLength": 63}, "self.matches('^[a-z]+$')") == 26 * 2 + 1
    assert _cost({**STRING, "maxLength": 63}, "self.startsWith('ab')") == 1 + 1


def test_the_estimator_multiplies_macros_by_the_list_bound_and_nests_them() -> None:
    enum = {"type": "string", "enum": ["aa", "bbbbbb"]}
    types = {"type": "object", "properties": {"types": {"type": "array", "maxItems": 13, "items": enum}}}
    # exists_one: 2 + 13 * (equality 3 + conditional 2); all: 2 + 1 + 13 * (1 + that + 2)
    assert _cost(types, "self.types.all(t, self.types.exists_one(u, u == t))") == 3 + 13 * (1 + 69 + 2)
    unbounded = {"type": "object", "properties": {"types": {"type": "array", "items": enum}}}
    assert _cost(unbounded, "self.types.all(t, self.types.exists_one(u, u == t))") > cel_cost.PER_RULE_LIMIT


def test_a_rule_inside_lists_is_charged_once_per_possible_item() -> None:
    """The cardinality: the product of the enclosing maxItems, or a worst case from the request size if unbounded."""
    rule = _rule("self.matches('^[a-z]+$')")
    unbounded_items = gadget_crd({"names": {"type": "array", "items": {**STRING, **rule}}})
    ten_items = gadget_crd({"names": {"type": "array", "maxItems": 10, "items": {**STRING, **rule}}})
    inner = {"type": "array", "maxItems": 2, "items": {**STRING, **rule}}
    nested = gadget_crd({"groups": {"type": "array", "maxItems": 10, "items": inner}})
    where = f"{SPEC}.properties[names].items.x-kubernetes-validations[0].rule"
    assert [(error.field, error.detail[:40]) for error in _field_errors(unbounded_items)] == [
        (where, "estimated rule cost exceeds budget by fa"),
        (where, "contributed to estimated rule cost total"),
        (SCHEMA, "x-kubernetes-validations estimated rule "),
    ]
    assert _field_errors(ten_items) == []  # 629,147 x 10
    assert [error.detail.split(" (")[0] for error in _field_errors(nested)] == [
        "estimated rule cost exceeds budget by factor of 1.258294x"  # 629,147 x 10 x 2
    ]


def _field_errors(crd: dict[str, Any]) -> list[FieldError]:
    crd_validation.set_defaults(crd)
    return crd_validation.validate(crd)


def _array(items: dict[str, Any], bound: int | None = None) -> dict[str, Any]:
    return {"type": "array", "items": items, **({"maxItems": bound} if bound is not None else {})}


def _map(values: dict[str, Any], bound: int | None = None) -> dict[str, Any]:
    return {"type": "object", "additionalProperties": values, **({"maxProperties": bound} if bound is not None else {})}


def _string(bound: int | None = None) -> dict[str, Any]:
    return {"type": "string", **({"maxLength": bound} if bound is not None else {})}


NUMBER, DURATION = {"type": "number"}, {"type": "string", "format": "duration"}
# Expected costs as kube-apiserver computes them (apiextensions-apiserver schema/cel TestCostEstimation).
SERVER_COSTS: list[tuple[dict[str, Any], str, int]] = [
    (_array(NUMBER), "self.all(x, true)", 4_718_591),
    (_array(NUMBER, 10), "self.all(x, true)", 32),
    (_array(STRING, 20), "self.all(x, true)", 62),
    (_array(NUMBER, 10), "self.all(x, self.all(y, self.all(z, true)))", 3_552),
    (_array(_array(NUMBER)), "self.all(x, true)", 3_145_727),
    (_array(DURATION), "self.all(x, true)", 2_359_295),
    (_array({"x-kubernetes-int-or-string": True}), "self[0] == 5", 3),
    (_array(STRING), "self[1] == self[1]", 314_577),
    (_map(NUMBER), "self.all(x, true)", 1_348_169),
    (_map(STRING, 3), "self.all(x, true)", 11),
    (_string(), "self.contains('test')", 314_574),
    (_string(), 'size(self + "hello") > size("hello")', 314_578),
    (_string(50), 'self.matches("x")', 22),
    (_string(), "self.find('[0-9]+') == ''", 629_147),
    (_string(0), 'self == "x"', 1),
    ({"type": "string", "enum": ["A", "B", "C", "LongValue"]}, "self.contains('A')", 2),
    (_map({"type": "integer"}), "oldSelf.size() == self.size()", 5),
]


@pytest.mark.parametrize(
    ("node", "rule", "cost"), SERVER_COSTS, ids=[f"{rule}-{cost}" for _, rule, cost in SERVER_COSTS]
)
def test_the_estimator_gives_the_costs_kube_apiserver_computes(node: dict[str, Any], rule: str, cost: int) -> None:
    self_type = cel_types.schema_decl_type(node, is_root=False)
    assert self_type is not None
    compiled = cel_check.compile_expression(rule, {"self": self_type, "oldSelf": self_type})
    assert cel_cost.expression_cost(compiled, self_type) == cost


FIELD_PATH_SCHEMA = {
    "type": "object",
    "properties": {
        "foo": {"type": "object", "additionalProperties": {"type": "object", "properties": {"f1": NUMBER}}},
        "a": {
            "type": "object",
            "properties": {
                "bbb": {"type": "object", "properties": {"c": NUMBER, "34": NUMBER}},
                "bbb.c": {"type": "object", "properties": {"a-b34": NUMBER}},
            },
        },
        "list": _array({"type": "object", "properties": {"a": NUMBER}}),
    },
}
# The server's verdicts (apiextensions TestValidateFieldPath): None = valid, else ValidFieldPath's error.
FIELD_PATHS: list[tuple[str, str | None]] = [
    (".a['bbb.c'].a-b34", None),
    (".foo.f1", None),
    (".a.bbb.34", None),
    (".list", None),
    (".a.foo", "does not refer to a valid field"),
    (".list[1]", "expected single quoted string but got 1"),
    (".list.a", "does not refer to a valid field"),
    ("a", "expected [ or . but got: a"),
    (".a..b", "does not refer to a valid field"),
]


@pytest.mark.parametrize(("field_path", "refusal"), FIELD_PATHS)
def test_a_rules_field_path_gets_the_servers_verdict(field_path: str, refusal: str | None) -> None:
    if refusal is None:
        schema.normalized_field_path(FIELD_PATH_SCHEMA, field_path)
    else:
        with pytest.raises(ValueError, match=re.escape(refusal)):
            schema.normalized_field_path(FIELD_PATH_SCHEMA, field_path)


KEYWORDS_SCHEMA = {
    "type": "object",
    "properties": {
        "namespace": _array(_array(STRING)),
        "if": {"type": "integer"},
        "self": {"type": "integer"},
        "d": NUMBER,
    },
}
# The server's compile verdicts (apiextensions TestCelCompilation and cel-go): None = compiles, else the error.
COMPILES: list[tuple[str, str | None]] = [
    ("size(self.__namespace__[0]) == 10", None),
    ("size(self.namespace[0]) == 10", None),  # keywords as field names, Kubernetes 1.32+
    ("self.if == 10 && self.self == 10", None),
    ("string(self.self).endsWith('s')", None),
    ("self == 10", "found no matching overload for '_==_' applied to '(selfType, int)'"),
    ("self.d == 0", "found no matching overload for '_==_' applied to '(double, int)'"),
    ("self.d > 0", None),  # cross-type numeric ordering (Kubernetes 1.28+)
    ("fakeFunction('abc') == 'ABC'", "undeclared reference to 'fakeFunction'"),
]


@pytest.mark.parametrize(("rule", "error"), COMPILES)
def test_a_rule_compiles_or_not_as_on_the_server(rule: str, error: str | None) -> None:
    self_type = cel_types.schema_decl_type(KEYWORDS_SCHEMA, is_root=False)
    assert self_type is not None
    if error is None:
        assert cel_check.compile_expression(rule, {"self": self_type}).type.kind == "bool"
    else:
        with pytest.raises(cel_check.CelCompileError, match=re.escape(error)):
            cel_check.compile_expression(rule, {"self": self_type})
