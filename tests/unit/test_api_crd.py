"""The CRD is generated from the API types, is structural, documented, and its CEL rules are real CEL."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import celpy
import jsonschema
import kubernetes_validate
import pytest
import yaml
from pydantic import Field

from kubetune.api.base import ApiModel
from kubetune.api.crd import crd, render
from kubetune.api.notify import DEFAULT_EVENTS
from kubetune.api.schema import model_schema
from kubetune.api.types import FineTuneRunSpec
from kubetune.api.validate import crd_cel_rules, load_runs

ROOT = Path(__file__).resolve().parents[2]
COMMITTED = ROOT / "crds" / "kubetune.dev_finetuneruns.yaml"


def walk(node: dict[str, Any], path: str = "") -> list[tuple[str, dict[str, Any]]]:
    found = [(path, node)]
    for key, child in node.get("properties", {}).items():
        found += walk(child, f"{path}.{key}")
    if isinstance(node.get("items"), dict):
        found += walk(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        found += walk(node["additionalProperties"], f"{path}{{}}")
    return found


def schema() -> dict[str, Any]:
    return crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def test_committed_crd_is_exactly_what_the_types_generate() -> None:
    assert COMMITTED.read_text(encoding="utf-8") == render(), "run `kubetune crd -o crds/kubetune.dev_finetuneruns.yaml`"


def test_crd_validates_against_the_kubernetes_schema() -> None:
    kubernetes_validate.validate(yaml.safe_load(COMMITTED.read_text()), kubernetes_validate.latest_version(), strict=True)


def test_crd_names_and_columns() -> None:
    spec = crd()["spec"]
    assert spec["group"] == "kubetune.dev" and spec["names"]["plural"] == "finetuneruns"
    assert spec["names"]["shortNames"] == ["ftr"] and spec["names"]["categories"] == ["kubetune"]
    version = spec["versions"][0]
    assert version["name"] == "v1alpha1" and version["subresources"] == {"status": {}}
    assert [c["name"] for c in version["additionalPrinterColumns"]][:5] == ["Phase", "Stage", "Progress", "Loss", "Age"]


def test_schema_is_structural() -> None:
    for path, node in walk(schema()):
        assert "type" in node, f"{path or '<root>'} has no type"
        for forbidden in ("$ref", "anyOf", "oneOf", "allOf", "definitions", "$defs"):
            assert forbidden not in node, f"{path} uses {forbidden}"


def test_every_spec_and_status_field_has_a_description() -> None:
    for path, node in walk(schema()):
        if path.startswith((".spec", ".status")) and not path.endswith(("[]", "{}")):
            assert node.get("description"), f"{path} has no description (kubectl explain shows nothing)"


def test_spec_defaults_enums_and_bounds_are_in_the_schema() -> None:
    spec = schema()["properties"]["spec"]["properties"]
    training = spec["training"]["properties"]
    assert training["method"]["enum"] == ["qlora", "lora"] and training["method"]["default"] == "qlora"
    assert training["lora"]["default"] == {} and training["lora"]["properties"]["r"]["minimum"] == 1
    assert spec["export"]["properties"]["types"]["default"] == ["q8_0"]
    assert "q4_k_m" in spec["export"]["properties"]["types"]["items"]["enum"]


def inside_list_items(node: dict[str, Any], path: str = "", in_items: bool = False) -> list[tuple[str, dict[str, Any]]]:
    """Every node inside a list's items (at any depth: nested objects, maps and lists of an item too)."""
    found = [(path, node)] if in_items else []
    for key, child in node.get("properties", {}).items():
        found += inside_list_items(child, f"{path}.{key}", in_items)
    if isinstance(node.get("items"), dict):
        found += inside_list_items(node["items"], f"{path}[]", True)
    if isinstance(node.get("additionalProperties"), dict):
        found += inside_list_items(node["additionalProperties"], f"{path}{{}}", in_items)
    return found


def test_nothing_inside_a_lists_items_has_a_default_so_the_server_stores_each_list_as_applied() -> None:
    # Lists are atomic: a list whose items the server defaulted differs from the last-applied annotation, and
    # `kubectl apply --server-side` after `kubectl apply` of the same file conflicts on it (issue: SSA upgrade).
    items = inside_list_items(schema())
    assert {path for path, _ in items} >= {".spec.resources.train.tolerations[].operator",
                                           ".spec.evaluate.prompts[].expectNotContains",
                                           ".spec.notify.webhooks[].timeoutSeconds",
                                           ".status.conditions[].observedGeneration"}
    assert [path for path, node in items if "default" in node] == []


def test_a_list_items_fields_name_their_default_in_their_description_for_kubectl_explain() -> None:
    fields = dict(inside_list_items(schema()))
    assert fields[".spec.resources.train.tolerations[].operator"]["description"].endswith(" Default: Equal.")
    assert fields[".spec.notify.webhooks[].format"]["description"].endswith(" Default: json.")
    assert fields[".spec.notify.webhooks[].timeoutSeconds"]["description"].endswith(" Default: 10.")
    assert fields[".spec.notify.webhooks[].events"]["description"].endswith(" Default: all but StageSucceeded.")


class Nested(ApiModel):
    """An object inside a list item."""

    level: int = 3
    """How deep."""


class Item(ApiModel):
    """A list item whose fields have defaults at every depth."""

    name: str
    """Its name."""
    nested: Nested = Field(default_factory=Nested)
    """An object."""
    by_key: dict[str, Nested] = Field(default_factory=dict)
    """A map of objects."""
    inner: list[Nested] = Field(default_factory=list)
    """A list of objects."""


class Holder(ApiModel):
    """Holds a list and a plain object."""

    items: list[Item] = Field(default_factory=list)
    """The list."""
    nested: Nested = Field(default_factory=Nested)
    """An object outside any list keeps its defaults."""


def test_the_generator_drops_defaults_at_every_depth_of_an_item_and_keeps_them_outside_lists() -> None:
    generated = model_schema(Holder)
    assert [path for path, node in inside_list_items(generated) if "default" in node] == []
    item = generated["properties"]["items"]["items"]["properties"]
    assert item["nested"]["properties"]["level"]["description"] == "How deep. Default: 3."
    assert generated["properties"]["items"]["default"] == []  # the list itself may default: it is not an item
    assert generated["properties"]["nested"]["default"] == {}
    assert generated["properties"]["nested"]["properties"]["level"]["default"] == 3


def test_the_models_still_fill_in_a_list_items_defaults_when_they_parse_a_spec() -> None:
    spec = FineTuneRunSpec.model_validate({
        "resources": {"train": {"tolerations": [{"key": "gpu"}]}},
        "evaluate": {"prompts": [{"prompt": "Who are you?", "expectContains": ["Ada"]}]},
        "notify": {"webhooks": [{"urlSecret": {"name": "hooks", "key": "url"}}]},
    }).to_manifest()
    assert spec["resources"]["train"]["tolerations"] == [{"key": "gpu", "operator": "Equal"}]
    assert spec["evaluate"]["prompts"] == [{"prompt": "Who are you?", "expectContains": ["Ada"], "expectNotContains": []}]
    assert spec["notify"]["webhooks"] == [{"urlSecret": {"name": "hooks", "key": "url"}, "format": "json",
                                           "events": list(DEFAULT_EVENTS), "timeoutSeconds": 10}]


@pytest.mark.parametrize("toleration", [{}, {"key": ""}, {"key": "gpu"}, {"key": "gpu", "value": "a100"},
                                        {"value": "x"}, {"key": "gpu", "effect": "NoExecute", "tolerationSeconds": 5}])
def test_a_tolerations_rules_judge_an_absent_operator_as_its_default_equal(toleration: dict[str, Any]) -> None:
    # The server no longer writes `operator: Equal` into the item before its rules run: absent must mean Equal.
    node = schema()["properties"]["spec"]["properties"]["resources"]["properties"]["train"]["properties"]
    env = celpy.Environment()
    for rule in node["tolerations"]["items"]["x-kubernetes-validations"]:
        program = env.program(env.compile(rule["rule"]))
        verdicts = [bool(program.evaluate({"self": celpy.json_to_cel(value)}))
                    for value in (toleration, {**toleration, "operator": "Equal"})]
        assert verdicts[0] == verdicts[1], rule["rule"]


@pytest.mark.parametrize(("path", "rule"), crd_cel_rules(), ids=lambda v: v if isinstance(v, str) else v["rule"][:40])
def test_every_cel_rule_compiles(path: str, rule: dict[str, Any]) -> None:
    celpy.Environment().compile(rule["rule"])
    assert rule["message"]


def default_violations(node: dict[str, Any], value: Any, path: str) -> list[str]:
    """What a real API server reports when it registers the CRD: each `default` checked against its own schema's
    CEL rules (and those of the parts the default contains) as written, without filling nested defaults first."""
    found = []
    for rule in node.get("x-kubernetes-validations", []):
        env = celpy.Environment()
        try:
            result = env.program(env.compile(rule["rule"])).evaluate({"self": celpy.json_to_cel(value)})
            verdict = str(result) if isinstance(result, Exception) else "" if result else "false"
        except celpy.CELEvalError as error:
            verdict = str(error)
        if verdict:
            found.append(f"{path}.default: {rule['message']} ({verdict})")
    if isinstance(value, dict):
        for key, child in value.items():
            schema = node.get("properties", {}).get(key) or node.get("additionalProperties")
            if isinstance(schema, dict):
                found += default_violations(schema, child, f"{path}.{key}")
    elif isinstance(value, list) and isinstance(node.get("items"), dict):
        for index, item in enumerate(value):
            found += default_violations(node["items"], item, f"{path}[{index}]")
    return found


def test_every_default_satisfies_its_schema_rules_as_written_like_a_real_api_server_checks_it() -> None:
    defaults = [(path, node) for path, node in walk(schema()) if "default" in node]
    assert len(defaults) > 50
    violations = [v for path, node in defaults for v in default_violations(node, node["default"], path)]
    assert violations == []


def test_the_default_check_finds_a_rule_that_reads_a_field_only_nested_defaults_would_fill() -> None:
    # The CRD a v1.36 server refused (issue 18): `default: {}` on an object whose rule reads `self.types`.
    refused = {"type": "object", "default": {}, "properties": {"types": {"type": "array", "default": ["q8_0"]}},
               "x-kubernetes-validations": [{"rule": "self.types.all(t, self.types.exists_one(u, u == t))",
                                             "message": "must not repeat a type"}]}
    assert [v.split(" (")[0] for v in default_violations(refused, {}, ".export")] == [
        ".export.default: must not repeat a type"]


def test_no_rule_on_the_object_root_names_a_field_path() -> None:
    # A real server refuses `fieldPath: .metadata.name` and reports root rules at no path.
    assert all("fieldPath" not in rule for rule in schema()["x-kubernetes-validations"])


def test_every_field_path_names_a_property_below_its_rule() -> None:
    # The server refuses a fieldPath that does not resolve in the schema of the rule's own node.
    checked = 0
    for path, node in walk(schema()):
        for rule in node.get("x-kubernetes-validations", []):
            if "fieldPath" in rule:
                target = node
                for step in rule["fieldPath"].removeprefix(".").split("."):
                    assert step in target.get("properties", {}), f"{path}: {rule['fieldPath']} names no property"
                    target = target["properties"][step]
                checked += 1
    assert checked >= 15


def test_every_rule_that_matches_or_iterates_is_bounded_for_the_cel_cost_budget() -> None:
    for path, node in walk(schema()):
        for rule in node.get("x-kubernetes-validations", []):
            for field in ("uri", "structure", "types"):
                if f"self.{field}." in rule["rule"]:
                    child = node["properties"][field]
                    assert child.get("maxLength") or child.get("maxItems"), f"{path}.{field} is unbounded: {rule}"
            if rule["rule"].startswith("self.all(k"):
                assert node.get("maxProperties"), f"{path} map has no maxProperties: {rule}"


def test_examples_are_valid_for_both_the_models_and_the_crd_schema() -> None:
    examples = sorted((ROOT / "examples").glob("*.yaml"))
    assert len(examples) >= 3
    openapi = schema()
    for example in examples:
        for run in load_runs(example, relative_paths=True):  # local-only examples' ./ paths, as kubetune run reads them
            # The defaulted manifest is what the API server stores: it must satisfy the CRD's own schema too.
            jsonschema.validate(run.manifest(), _json_schema(openapi))


def _json_schema(node: dict[str, Any]) -> dict[str, Any]:
    """OpenAPI v3 subset → JSON Schema (drop Kubernetes extensions; exclusive bounds are booleans there)."""
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key.startswith("x-kubernetes") or key in ("default", "description", "format"):
            continue
        if key == "properties":
            out[key] = {k: _json_schema(v) for k, v in value.items()}
        elif key in ("items", "additionalProperties") and isinstance(value, dict):
            out[key] = _json_schema(value)
        elif key in ("exclusiveMinimum", "exclusiveMaximum"):
            bound = "minimum" if key == "exclusiveMinimum" else "maximum"
            out[key] = node[bound]
        else:
            out[key] = value
    if out.get("type") == "object" and "properties" in out and "additionalProperties" not in out:
        out["additionalProperties"] = False
    for key in ("exclusiveMinimum", "exclusiveMaximum"):
        if key in out:
            out.pop("minimum" if key == "exclusiveMinimum" else "maximum", None)
    return out
