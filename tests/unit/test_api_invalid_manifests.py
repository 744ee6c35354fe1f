"""`kubetune validate` rejects bad manifests, each with the field path Kubernetes would report."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from kubetune.api import types as t
from kubetune.api.crd import openapi_schema
from kubetune.api.validate import InvalidManifest, cel_errors, parse_run, raw_cel_errors


def manifest(spec: dict[str, Any] | None = None, **metadata: Any) -> dict[str, Any]:
    return {
        "apiVersion": "kubetune.dev/v1alpha1",
        "kind": "FineTuneRun",
        "metadata": {"name": "demo", **metadata},
        "spec": spec if spec is not None else {},
    }


def at(path: str, value: Any) -> dict[str, Any]:
    """A manifest whose spec has `value` at the dotted camelCase `path`."""
    spec: dict[str, Any] = {}
    node = spec
    *parents, leaf = path.split(".")
    for part in parents:
        node = node.setdefault(part, {})
    node[leaf] = value
    return manifest(spec)


INVALID: list[tuple[str, dict[str, Any], str, str]] = [
    # --- the document itself
    ("wrong apiVersion", {**manifest(), "apiVersion": "kubetune.dev/v1"}, "apiVersion", "must be kubetune.dev/v1alpha1"),
    ("wrong kind", {**manifest(), "kind": "Job"}, "kind", "must be FineTuneRun"),
    ("unknown top-level field", {**manifest(), "extra": 1}, "extra", "unknown field"),
    ("missing name", manifest(name=None), "metadata.name", "required"),
    # The run's own name rules sit on the object's root: the API server reports them at no path ("").
    ("name too long for Job names", manifest(name="a" * 41), "", "at most 40 characters"),
    ("name with path traversal", manifest(name="../etc"), "", "DNS-1035"),
    ("name with path traversal is no DNS subdomain either", manifest(name="../etc"), "metadata.name",
     "RFC 1123 subdomain"),
    ("name with uppercase", manifest(name="Demo"), "", "DNS-1035"),
    ("name starting with a digit", manifest(name="1demo"), "", "DNS-1035"),
    ("name with a trailing newline", manifest(name="demo\n"), "", "DNS-1035"),
    ("name not a string", manifest(name=["demo"]), "metadata.name", "must be a string"),
    ("namespace with a slash", manifest(namespace="a/b"), "metadata.namespace", "DNS-1123"),
    ("namespace with a trailing newline", manifest(namespace="default\n"), "metadata.namespace", "DNS-1123"),
    ("generation not a number", manifest(generation="abc"), "metadata.generation", "must be an integer"),
    ("labels as a list", manifest(labels=["a", "b"]), "metadata.labels", "must be a mapping"),
    ("label value with a trailing newline", manifest(labels={"team": "ml\n"}), "metadata.labels", "label values"),
    ("label value with a space", manifest(labels={"team": "ml ops"}), "metadata.labels", "label values"),
    ("label value too long", manifest(labels={"team": "a" * 64}), "metadata.labels", "label values"),
    ("label value not a string", manifest(labels={"team": 3}), "metadata.labels.team", "must be a string"),
    ("label key with two slashes", manifest(labels={"a/b/c": "x"}), "metadata.labels", "qualified name"),
    ("annotation key with a space", manifest(annotations={"my note": "x"}), "metadata.annotations",
     "qualified name"),
    ("unknown metadata field", manifest(owner="me"), "metadata.owner", "unknown field"),
    ("creation time not RFC 3339", manifest(creationTimestamp="yesterday"), "metadata.creationTimestamp",
     "RFC 3339"),
    ("finalizer with a space", manifest(finalizers=["a b"]), "metadata.finalizers[0]", "qualified name"),
    ("owner reference without uid", manifest(ownerReferences=[{"apiVersion": "v1", "kind": "X", "name": "x"}]),
     "metadata.ownerReferences[0].uid", "required"),

    ("spec is a list", {**manifest(), "spec": []}, "spec", "must be a mapping"),
    ("unknown spec field", at("gpus", 1), "spec.gpus", "unknown field"),
    ("suspend not a boolean", at("suspend", "yes"), "spec.suspend", "must be a boolean"),
    # --- baseModel
    ("base model URI with an unknown scheme", at("baseModel.uri", "ftp://x/y"), "spec.baseModel.uri", "must match"),
    ("base model URI relative path", at("baseModel.uri", "models/x"), "spec.baseModel.uri", "must match"),
    ("base model URI with path traversal", at("baseModel.uri", "s3://bucket/a/../../b"), "spec.baseModel.uri",
     "must not contain '..'"),
    ("base model s3 bucket too short", at("baseModel.uri", "s3://a/x"), "spec.baseModel.uri", "must match"),
    ("base model URI with percent-encoded traversal", at("baseModel.uri", "file:///models/%2E%2E/%2e%2e/etc"),
     "spec.baseModel.uri", "percent-encoded"),
    ("base model URI with a double-encoded percent", at("baseModel.uri", "/models/%252e%252e"), "spec.baseModel.uri",
     "percent-encoded"),
    ("base model URI with a NUL byte", at("baseModel.uri", "/models/a\x00b"), "spec.baseModel.uri", "must match"),
    ("base model hf revision escaping", at("baseModel.uri", "hf://org/name@../.."), "spec.baseModel.uri", "must"),
    ("base model hf URI with credentials", at("baseModel.uri", "hf://user:secret@org/name"), "spec.baseModel.uri",
     "must match"),
    ("base model revision escaping", at("baseModel", {"uri": "hf://org/m", "revision": "../.."}),
     "spec.baseModel.revision", "must match"),
    ("base model revision with a trailing newline", at("baseModel", {"uri": "hf://org/m", "revision": "main\n"}),
     "spec.baseModel.revision", "must match"),
    ("base model sha256 not hex", at("baseModel.sha256", "xyz"), "spec.baseModel.sha256", "must match"),
    ("token secret on a non-hf model", {**manifest({"baseModel": {"uri": "s3://bucket/m", "tokenSecret":
                                                                  {"name": "hf", "key": "token"}}})},
     "spec.baseModel.tokenSecret", "only to hf://"),
    ("token secret without key", at("baseModel", {"uri": "hf://org/m", "tokenSecret": {"name": "hf"}}),
     "spec.baseModel.tokenSecret.key", "required"),
    # --- dataset
    ("dataset URI with an unknown scheme", at("dataset.uri", "http://x"), "spec.dataset.uri", "must match"),
    ("dataset structure escaping the tree", at("dataset.structure", "../structure.json"), "spec.dataset.structure",
     "must"),
    ("dataset structure not json", at("dataset.structure", "structure.yaml"), "spec.dataset.structure", "must match"),
    # A key rule is reported at the map, as the API server reports the map's CEL rule.
    ("placeholder name lowercase", at("dataset.placeholders", {"name": "Nova"}), "spec.dataset.placeholders",
     "keys must match"),
    ("placeholder name with a trailing newline", at("dataset.placeholders", {"NAME\n": "Nova"}),
     "spec.dataset.placeholders", "keys must match"),
    ("placeholder value empty", at("dataset.placeholders", {"NAME": ""}), "spec.dataset.placeholders.NAME",
     "must not be empty"),
    ("dataset file URI with percent-encoded dots", at("dataset.uri", "file:///data/%2e%2e/etc"), "spec.dataset.uri",
     "percent-encoded"),
    ("dataset path with a percent-encoded slash", at("dataset.uri", "/data/..%2Fetc"), "spec.dataset.uri",
     "percent-encoded"),
    ("dataset structure with percent-encoded dots", at("dataset.structure", "%2e%2e/s.json"), "spec.dataset.structure",
     "percent-encoded"),
    ("dataset URI with a query", at("dataset.uri", "s3://bucket/data?versionId=1"), "spec.dataset.uri", "must match"),
    ("dataset URI with a fragment", at("dataset.uri", "file:///data#x"), "spec.dataset.uri", "must match"),
    ("dataset URI with a trailing newline", at("dataset.uri", "/data\n"), "spec.dataset.uri", "must match"),
    ("placeholder value not a string", at("dataset.placeholders", {"NAME": 3}), "spec.dataset.placeholders.NAME",
     "must be a string"),
    ("max sequence length too small", at("dataset.maxSeqLength", 8), "spec.dataset.maxSeqLength", "must be >= 32"),
    ("eval split above half", at("dataset.evalSplit", 0.9), "spec.dataset.evalSplit", "must be <= 0.5"),
    ("category with a slash", at("dataset.categories", ["a/b"]), "spec.dataset.categories[0]", "must match"),
    # --- training
    ("unknown training method", at("training.method", "full"), "spec.training.method", "must be one of"),
    ("zero epochs", at("training.epochs", 0), "spec.training.epochs", "must be > 0"),
    ("epochs as a string", at("training.epochs", "3"), "spec.training.epochs", "must be a number"),
    ("negative extra epochs", at("training.extraEpochs", -1), "spec.training.extraEpochs", "must be >= 0"),
    ("extra epochs with max steps", at("training", {"maxSteps": 10, "extraEpochs": 1}), "spec.training.extraEpochs",
     "cannot be combined with maxSteps"),
    ("max steps zero", at("training.maxSteps", 0), "spec.training.maxSteps", "must be >= 1"),
    ("learning rate zero", at("training.learningRate", 0), "spec.training.learningRate", "must be > 0"),
    ("unknown scheduler", at("training.lrScheduler", "exp"), "spec.training.lrScheduler", "must be one of"),
    ("batch size zero", at("training.batchSize", 0), "spec.training.batchSize", "must be >= 1"),
    ("batch size float", at("training.batchSize", 2.5), "spec.training.batchSize", "must be an integer"),
    ("negative seed", at("training.seed", -1), "spec.training.seed", "must be >= 0"),
    ("lora rank zero", at("training.lora.r", 0), "spec.training.lora.r", "must be >= 1"),
    ("recomputed share above one", at("training.recomputeLayers", 1.5), "spec.training.recomputeLayers",
     "must be <= 1"),
    ("lora dropout one", at("training.lora.dropout", 1.0), "spec.training.lora.dropout", "must be < 1"),
    ("lora target modules empty", at("training.lora.targetModules", []), "spec.training.lora.targetModules",
     "at least 1 item"),
    ("lora unknown field", at("training.lora.rank", 8), "spec.training.lora.rank", "unknown field"),
    ("quantization with plain lora", at("training", {"method": "lora", "quantization": {"type": "nf4"}}),
     "spec.training.quantization", "only to method qlora"),
    ("fp8 with plain lora", at("training", {"method": "lora", "fp8": True}), "spec.training.fp8",
     "only to method qlora"),
    ("fp8 not a boolean", at("training.fp8", "yes"), "spec.training.fp8", "must be a boolean"),
    ("unknown 4-bit type", at("training.quantization.type", "int4"), "spec.training.quantization.type",
     "must be one of"),
    ("unknown compute dtype", at("training.quantization.computeDtype", "fp8"),
     "spec.training.quantization.computeDtype", "must be one of"),
    ("checkpoint interval zero", at("training.checkpoint.everySteps", 0), "spec.training.checkpoint.everySteps",
     "must be >= 1"),
    ("keep no checkpoints", at("training.checkpoint.keep", 0), "spec.training.checkpoint.keep", "must be >= 1"),
    ("empty special token", at("training.addedSpecialTokens", [""]), "spec.training.addedSpecialTokens[0]",
     "must not be empty"),
    ("special token ending in a space", at("training.addedSpecialTokens", ["<x>", "<y> "]),
     "spec.training.addedSpecialTokens[1]", "must match"),
    ("special token that is a newline", at("training.addedSpecialTokens", ["\n"]), "spec.training.addedSpecialTokens[0]",
     "must match"),
    ("stop sequences not a list", at("training.stopSequences", "</output>"), "spec.training.stopSequences",
     "must be a list"),
    # --- merge / export / evaluate
    ("unknown merge dtype", at("merge.dtype", "int8"), "spec.merge.dtype", "must be one of"),
    ("malformed checkpoint name", at("merge.checkpoint", "step-5"), "spec.merge.checkpoint", "must match"),
    ("unknown export type", at("export.types", ["q8_0", "q9_x"]), "spec.export.types[1]", "must be one of"),
    ("no export types", at("export.types", []), "spec.export.types", "at least 1 item"),
    ("repeated export type", at("export.types", ["q8_0", "q8_0"]), "spec.export.types", "must not repeat"),
    ("eval prompt missing prompt", at("evaluate.prompts", [{"expectContains": ["x"]}]), "spec.evaluate.prompts[0].prompt",
     "required"),
    ("pass rate above one", at("evaluate.minPassRate", 1.5), "spec.evaluate.minPassRate", "must be <= 1"),
    ("max tokens zero", at("evaluate.maxTokens", 0), "spec.evaluate.maxTokens", "must be >= 1"),
    ("eval-loss bound without an eval split", at("evaluate.maxEvalLoss", 2.0), "spec.evaluate.maxEvalLoss",
     "set dataset.evalSplit above 0"),
    ("eval-loss ratio with a zero eval split", manifest({"dataset": {"evalSplit": 0}, "evaluate": {"maxEvalLossRatio": 1.1}}),
     "spec.evaluate.maxEvalLossRatio", "needs held-out data"),
    ("eval-loss bound of zero", manifest({"dataset": {"evalSplit": 0.1}, "evaluate": {"maxEvalLoss": 0}}),
     "spec.evaluate.maxEvalLoss", "must be > 0"),
    # --- storage
    ("storage URI with an unknown scheme", at("storage.uri", "gs://bucket/x"), "spec.storage.uri", "must match"),
    ("storage URI with path traversal", at("storage.uri", "s3://bucket/runs/.."), "spec.storage.uri",
     "must not contain '..'"),
    ("storage endpoint for a local store", at("storage", {"uri": "/data", "endpoint": "http://minio:9000"}),
     "spec.storage.endpoint", "only to s3://"),
    ("storage endpoint not a URL", at("storage", {"uri": "s3://bucket/x", "endpoint": "minio:9000"}),
     "spec.storage.endpoint", "must match"),
    ("storage endpoint with credentials", at("storage", {"uri": "s3://bucket/x", "endpoint": "http://user:secret@minio"}),
     "spec.storage.endpoint", "must match"),
    ("storage endpoint with a query", at("storage", {"uri": "s3://bucket/x", "endpoint": "https://minio/?x=1"}),
     "spec.storage.endpoint", "must match"),
    ("storage endpoint with a fragment", at("storage", {"uri": "s3://bucket/x", "endpoint": "https://minio/#x"}),
     "spec.storage.endpoint", "must match"),
    ("storage URI with percent-encoded dots", at("storage.uri", "s3://bucket/runs/%2e%2e"), "spec.storage.uri",
     "percent-encoded"),
    ("credentials secret with uppercase", at("storage", {"uri": "s3://bucket/x", "credentialsSecret": "S3"}),
     "spec.storage.credentialsSecret", "must match"),
    # --- resources
    ("negative gpus", at("resources.train", {"gpus": -1}), "spec.resources.train.gpus", "must be >= 0"),
    ("negative cpu quantity", at("resources.train", {"cpu": "-2"}), "spec.resources.train.cpu", "must match"),
    ("memory with a bad unit", at("resources.defaults", {"memory": "10GB"}), "spec.resources.defaults.memory",
     "must match"),
    ("multi-node merge", at("resources.merge", {"nodes": 2}), "spec.resources.merge.nodes", "only to the train stage"),
    ("node selector key with a space", at("resources.train", {"nodeSelector": {"gpu type": "h100"}}),
     "spec.resources.train.nodeSelector", "keys must be label keys"),
    ("node selector key with a trailing newline", at("resources.train", {"nodeSelector": {"pool\n": "gpu"}}),
     "spec.resources.train.nodeSelector", "keys must be label keys"),
    ("node selector key name too long", at("resources.train", {"nodeSelector": {"a" * 64: "x"}}),
     "spec.resources.train.nodeSelector", "keys must be label keys"),
    ("node selector key prefix too long", at("resources.train", {"nodeSelector": {"a" * 254 + "/b": "x"}}),
     "spec.resources.train.nodeSelector", "keys must be label keys"),
    ("node selector key prefix uppercase", at("resources.train", {"nodeSelector": {"Example.com/gpu": "x"}}),
     "spec.resources.train.nodeSelector", "keys must be label keys"),
    ("node selector value with a trailing newline", at("resources.train", {"nodeSelector": {"pool": "gpu\n"}}),
     "spec.resources.train.nodeSelector.pool", "must match"),
    ("image with a non-breaking space", at("resources.train", {"image": "img\u00a0x"}),
     "spec.resources.train.image", "must match"),
    ("queue name with underscore", at("resources.train", {"queueName": "gpu_queue"}), "spec.resources.train.queueName",
     "must match"),
    ("unknown toleration operator", at("resources.train", {"tolerations": [{"key": "gpu", "operator": "In"}]}),
     "spec.resources.train.tolerations[0].operator", "must be one of"),
    ("deadline below a minute", at("resources.train", {"activeDeadlineSeconds": 5}),
     "spec.resources.train.activeDeadlineSeconds", "must be >= 60"),
    ("unknown stage in resources", at("resources.export", {"gpus": 1}), "spec.resources.export", "unknown field"),
]


@pytest.mark.parametrize(("case", "doc", "path", "message"), INVALID, ids=[c[0] for c in INVALID])
def test_invalid_manifest_is_rejected_with_its_field_path(case: str, doc: dict[str, Any], path: str, message: str) -> None:
    doc = copy.deepcopy(doc)
    if doc["metadata"].get("name") is None:
        del doc["metadata"]["name"]
    with pytest.raises(InvalidManifest) as raised:
        parse_run(doc)
    errors = {e.path: e.message for e in raised.value.errors}
    assert path in errors, f"{case}: expected an error at {path}, got {errors}"
    assert message in errors[path], f"{case}: {errors[path]!r} does not say {message!r}"


def test_the_invalid_table_covers_every_spec_section() -> None:
    sections = {path.split(".")[1] for _, _, path, _ in INVALID if path.startswith("spec.") and path.count(".") >= 1}
    assert {"baseModel", "dataset", "training", "merge", "export", "evaluate", "storage", "resources"} <= sections
    assert len(INVALID) >= 40


def test_a_minimal_manifest_is_valid_and_gets_every_default() -> None:
    run = parse_run(manifest())
    assert run.namespace == "default"
    assert run.spec.base_model.uri == "bundled://smollm2-135m-instruct"
    assert run.spec.training.method == "qlora" and run.spec.training.lora.r == 16
    assert run.spec.export.types == ["q8_0"]


def test_all_errors_of_a_manifest_are_reported_together() -> None:
    doc = manifest({"training": {"lora": {"r": 0}, "batchSize": 0}, "export": {"types": ["bogus"]}})
    with pytest.raises(InvalidManifest) as raised:
        parse_run(doc)
    assert {e.path for e in raised.value.errors} == {
        "spec.training.lora.r", "spec.training.batchSize", "spec.export.types[0]"}


def test_rules_are_checked_beside_a_bound_or_pattern_error_as_the_server_does() -> None:
    doc = manifest({"baseModel": {"uri": "hf://org/m", "revision": "../.."},
                    "dataset": {"uri": "file:///data/%2e%2e/etc", "placeholders": {"name": "x"}},
                    "training": {"method": "lora", "fp8": True, "batchSize": 0}})
    with pytest.raises(InvalidManifest) as raised:
        parse_run(doc)
    assert {e.path for e in raised.value.errors} == {
        "spec.baseModel.revision", "spec.training.batchSize",  # the models' bounds and patterns
        "spec.dataset.uri", "spec.dataset.placeholders", "spec.training.fp8"}  # and the CEL rules


def test_a_wrong_type_stops_the_rules_as_it_stops_them_on_the_server() -> None:
    doc = manifest({"dataset": {"uri": "file:///data/%2e%2e/etc"}, "training": {"batchSize": "four"}})
    with pytest.raises(InvalidManifest) as raised:
        parse_run(doc)
    assert [str(e) for e in raised.value.errors] == ["spec.training.batchSize: must be an integer"]


def _models_accept(spec: Any) -> bool:
    try:
        t.FineTuneRunSpec.model_validate(spec, strict=True)
    except ValueError:
        return False
    return True


# The table's cases that only a CEL rule refuses.
RULE_CASES = [(case, doc) for case, doc, path, _ in INVALID if path.startswith("spec.") and _models_accept(doc["spec"])]


@pytest.mark.parametrize(("case", "doc"), RULE_CASES, ids=[case for case, _ in RULE_CASES])
def test_rules_on_the_json_after_schema_defaults_agree_with_rules_on_the_defaulted_model(case: str, doc: dict[str, Any],
                                                                                        ) -> None:
    model = t.FineTuneRunSpec.model_validate(doc["spec"], strict=True)
    on_model = set(cel_errors(model, "spec"))
    on_json = set(raw_cel_errors(doc["spec"], openapi_schema()["properties"]["spec"], "spec"))
    assert on_model and on_json == on_model


def test_the_rule_cases_cover_every_kind_of_rule() -> None:
    assert len(RULE_CASES) >= 15
