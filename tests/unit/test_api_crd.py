"""The CRD is generated from the API types, is structural, documented, and its CEL rules are real CEL."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import celpy
import jsonschema
import kubernetes_validate
import pytest
import yaml

from kubetune.api.crd import crd, render
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
