"""Every FineTuneRun the API server accepts gets children the API server accepts: generated from the CRD's own schema
(names, labels, strings, numbers and lists pushed to the bounds it allows, every stage option), each run is walked
through the planner as the operator walks it (sources Job, then each stage's Job, first and last attempt), and every
object the operator would write is put through the emulator's admission, which mirrors kube-apiserver's: the
ConfigMaps, rendezvous Services and Jobs (in a namespace enforcing Pod Security `restricted`), the Events of each
transition, and each status patch against the CRD's status schema. A child the server refuses is a run stuck (or
failed) for a spec it accepted; the operator itself may refuse only a spec too big for any run config to fit a
ConfigMap."""

from __future__ import annotations

import copy
import dataclasses
import json
import re
import uuid
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import yaml
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st

from kubetune.api import types as t
from kubetune.api.validate import FineTuneRun, parse_run
from kubetune.notify import outbox
from kubetune.operator.jobspec import CONFIG_MAP_MAX_BYTES, JobSpecError, build
from kubetune.operator.kube import event_manifest
from kubetune.operator.settings import OperatorSettings
from kubetune.operator.status import StatusInputs, Transition, compute_status, failed_plan
from kubetune.planner import MAX_ATTEMPTS, CreateJob, Done, JobState, Lookup, Observed, Output, job_name, plan
from kubetune.sources import SOURCES, ResolvedSource, Sources
from kubetune.stages import resolution_ref
from tests.kube import admission, pod_security, schema
from tests.kube.errors import ApiError

REPO = Path(__file__).resolve().parents[2]
CRD = REPO / "crds" / "kubetune.dev_finetuneruns.yaml"
NOW = "2026-12-07T05:00:00Z"
# The namespace labels a careful cluster admin sets: Pod Security `restricted`, the strictest level.
RESTRICTED = {pod_security.ENFORCE_LABEL: "restricted", pod_security.ENFORCE_VERSION_LABEL: "latest"}
SETTINGS = OperatorSettings(store_uri="s3://artifacts/runs", store_endpoint="http://minio:9000", store_path_style=True,
                            credentials_secret="kubetune-s3")
# How reconcile.py fails a stage whose objects the API server refused: with the server's message, which quotes the
# values it refused (up to 64 KiB each).
REFUSAL = "the API server refused the stage's objects: " + "é" * 65536
# What a run config holds besides the spec: names, the store, the stages' refs and the resolved sources.
CONFIG_OVERHEAD = 16 * 1024
KINDS = {"ConfigMap": admission.CONFIGMAPS, "Service": admission.SERVICES, "Job": admission.JOBS,
         "Event": admission.EVENTS}
Obj = dict[str, Any]
Schema = dict[str, Any]


@cache
def crd_schema() -> Schema:
    crd = yaml.safe_load(CRD.read_text(encoding="utf-8"))
    [version] = crd["spec"]["versions"]
    return dict(version["schema"]["openAPIV3Schema"])


# --- values at the CRD's bounds --------------------------------------------------------------------------------


def longest(alphabet: str, size: int) -> st.SearchStrategy[str]:
    """A string of exactly `size` characters drawn from `alphabet`."""
    return st.text(st.sampled_from(alphabet), min_size=size, max_size=size)


LOWER_ALNUM = "abcdefghijklmnopqrstuvwxyz0123456789"
ALNUM = LOWER_ALNUM + "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


def alternatives(pattern: str) -> list[str]:
    """The branches of a pattern `^(a|b|c)$` (each a pattern of its own), or the pattern itself."""
    if not (pattern.startswith("^(") and pattern.endswith(")$")):
        return [pattern]
    branches, depth, start = [], 0, 2
    for index, char in enumerate(pattern[2:-2], start=2):
        escaped = index > 2 and pattern[index - 1] == "\\" and pattern[index - 2] != "\\"
        if escaped:
            continue
        depth += {"(": 1, ")": -1, "[": 1, "]": -1}.get(char, 0)
        if depth < 0:  # the first group closes before the end: `^(a)(b)$`
            return [pattern]
        if char == "|" and depth == 0:
            branches.append(pattern[start:index])
            start = index + 1
    return [f"^(?:{branch})$" for branch in [*branches, pattern[start:-2]]]


def bounded(pattern: str, max_size: int, *longest_forms: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    """Strings of `pattern` up to `max_size` characters (each branch of a URI's alternatives as likely as the
    others), and the longest forms the caller knows of."""
    drawn = [st.from_regex(branch, fullmatch=True).filter(lambda text: len(text) <= max_size)
             for branch in alternatives(pattern)]
    return st.one_of(*drawn, *longest_forms)


def dns_label(size: int) -> st.SearchStrategy[str]:
    return st.builds(lambda a, mid, b: a + mid + b, longest(LOWER_ALNUM, 1), longest(LOWER_ALNUM + "-", size - 2),
                     longest(LOWER_ALNUM, 1))


def dns_subdomain(size: int) -> st.SearchStrategy[str]:
    """`size` characters of 63-character labels joined by dots."""
    def join(labels: list[str]) -> str:
        return ".".join(labels)[:size].rstrip(".-") or "a"
    return st.lists(dns_label(63), min_size=(size + 63) // 64, max_size=(size + 63) // 64).map(join)


RUN_NAMES = bounded(t.RUN_NAME_PATTERN, t.RUN_NAME_MAX, st.builds(
    lambda a, mid, b: a + mid + b, longest("abcdefghijklmnopqrstuvwxyz", 1),
    longest(LOWER_ALNUM + "-", t.RUN_NAME_MAX - 2), longest(LOWER_ALNUM, 1)))
NAMESPACES = bounded(t.DNS_LABEL, 63, dns_label(63))
SUBDOMAINS = bounded(t.DNS_SUBDOMAIN, 253, dns_subdomain(253), dns_subdomain(63))
LABEL_VALUES = bounded(t.LABEL_VALUE, 63, st.builds(lambda a, mid, b: a + mid + b, longest(ALNUM, 1),
                                                     longest(ALNUM + "-_.", 61), longest(ALNUM, 1)))
LABEL_NAMES = bounded(r"^[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$", 63, LABEL_VALUES.filter(bool))
LABEL_KEYS = st.one_of(LABEL_NAMES, st.builds(lambda prefix, name: f"{prefix}/{name}", SUBDOMAINS, LABEL_NAMES))
QUANTITIES = st.one_of(
    # Exponents of at most 3 digits: the emulator computes 10**exponent exactly, which takes forever past that.
    st.from_regex(t.QUANTITY, fullmatch=True).filter(lambda text: len(text) <= 32
                                                     and not re.search(r"[eE][0-9]{4}", text)),
    st.sampled_from(["0", ".5", "0.001", "1m", "1n", "1u", "250m", "1Ki", "64Gi", "1Ei", "1e3", "1e999", "9" * 32,
                     "9" * 31 + "E", "0." + "0" * 29 + "1", "1" + "0" * 30 + "m"]),
)

# Per field (a path in the schema: `.` between properties, `[]` a list's items, `{}` a map's values), where a
# pattern alone cannot reach the longest values or a CEL rule constrains the keys.
FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "nodeSelector": st.dictionaries(LABEL_KEYS, LABEL_VALUES, max_size=4),
    "tolerations[].key": st.one_of(st.just(""), LABEL_KEYS),
    "tolerations[].value": LABEL_VALUES,
    "priorityClassName": SUBDOMAINS,
    "queueName": bounded(t.DNS_LABEL, 63, dns_label(63)),
    "image": bounded(t.IMAGE, 512, longest("".join(map(chr, range(0x21, 0x7f))), 512)),
    "cpu": QUANTITIES, "memory": QUANTITIES, "shmSize": QUANTITIES, "scratchSize": QUANTITIES,
    "tokenSecret.name": SUBDOMAINS, "urlSecret.name": SUBDOMAINS, "credentialsSecret.name": SUBDOMAINS,
    "storage.credentialsSecret": SUBDOMAINS, "oci.credentialsSecret": SUBDOMAINS,
    "tokenSecret.key": bounded(r"^[-._a-zA-Z0-9]+$", 253, longest(ALNUM + "-._", 253),
                               st.sampled_from([".", "..", "..token", ".token", "a..b"])),
    "placeholders": st.dictionaries(bounded(t.PLACEHOLDER_NAME, 40), st.text(min_size=1, max_size=40), max_size=4),
    "ollama.parameters": st.dictionaries(bounded(r"^[a-z][a-z0-9_]*$", 20).filter(lambda key: key != "stop"),
                                         bounded(r'^[^\x00-\x1f\x7f"]+$', 64), max_size=4),
}


def strategy(node: Schema, path: str) -> st.SearchStrategy[Any]:
    """Values `node` accepts (its CEL rules aside: `repair` satisfies those)."""
    for suffix, override in FIELDS.items():
        if path.endswith(suffix):
            pattern = node.get("pattern")
            return override if pattern is None else override.filter(re.compile(pattern).search)
    if "enum" in node:
        return st.sampled_from(node["enum"])
    kind = node.get("type")
    if kind == "object":
        if "properties" not in node:
            values = strategy(node.get("additionalProperties") or {"type": "string"}, path + "{}")
            most = min(3, node.get("maxProperties", 3))
            return st.dictionaries(st.text(min_size=1, max_size=10), values, max_size=most)
        properties = {key: strategy(sub, f"{path}.{key}") for key, sub in node["properties"].items()}
        # Every section of the spec (each an object with defaults): their options are drawn twice as often.
        required = set(node["properties"] if path == "spec" else node.get("required") or ())
        return st.fixed_dictionaries({key: value for key, value in properties.items() if key in required},
                                     optional={key: value for key, value in properties.items() if key not in required})
    if kind == "array":
        items = strategy(node["items"], path + "[]")
        low, high = node.get("minItems", 0), node.get("maxItems", 8)
        return st.lists(items, min_size=low, max_size=min(high, max(low, 3)))
    if kind == "integer":
        low, high = node.get("minimum", 0), node.get("maximum", 2**63 - 1)
        return st.one_of(st.integers(low, high), st.sampled_from([low, high]))
    if kind == "number":
        low, high = node.get("minimum", 0.0), node.get("maximum", 1e6)
        return st.floats(low, high, exclude_min=bool(node.get("exclusiveMinimum")),
                         exclude_max=bool(node.get("exclusiveMaximum")))
    if kind == "boolean":
        return st.booleans()
    assert kind == "string", (path, node)
    low, high = node.get("minLength", 0), node.get("maxLength", 4096)
    if "pattern" in node:
        return bounded(node["pattern"], high).filter(lambda text: len(text) >= low)
    return st.one_of(st.text(min_size=low, max_size=min(high, 40)),
                     st.builds(lambda char: char * high, st.characters(exclude_categories=["Cs"])))


# --- specs the CEL rules accept ----------------------------------------------------------------------------------

STEPS_BACK = re.compile(r"(^|/)\.\.(/|$)|%(2[eEfF]|5[cC]|25|00)")


def repair(spec: Obj) -> None:
    """Make a drawn spec satisfy the CRD's cross-field CEL rules, keeping as much of it as they allow."""
    evaluate, dataset = spec.get("evaluate") or {}, spec.get("dataset") or {}
    if ("maxEvalLoss" in evaluate or "maxEvalLossRatio" in evaluate) and not dataset.get("evalSplit"):
        spec.setdefault("dataset", {})["evalSplit"] = 0.5
    model = spec.get("baseModel") or {}
    if not str(model.get("uri", "")).startswith("hf://"):
        model.pop("tokenSecret", None)
        model.pop("revision", None)
    uri = dataset.get("uri", "bundled")
    if uri.startswith("hf://") and dataset.get("format", "tree") == "tree":
        dataset["format"] = "messages"
    elif uri == "bundled" and "format" in dataset:
        dataset["format"] = "tree"
    training = spec.get("training") or {}
    if training.get("method") == "lora":
        training.pop("quantization", None)
        training.pop("fp8", None)
    if training.get("activationOffload"):
        training["gradientCheckpointing"] = True
    if "maxSteps" in training:
        training.pop("extraEpochs", None)
    template = training.get("chatTemplate") or {}
    if "file" in template:
        template["source"] = "file"
        template.pop("inline", None)
    elif "inline" in template:
        template["source"] = "inline"
    elif template.get("source") in ("file", "inline"):
        template["source"] = "base"
    export = spec.get("export") or {}
    if "types" in export:
        export["types"] = list(dict.fromkeys(export["types"]))
    storage = spec.get("storage") or {}
    if not str(storage.get("uri", "")).startswith("s3://"):
        storage.pop("endpoint", None)
        storage.pop("credentialsSecret", None)
    for stage, block in (spec.get("resources") or {}).items():
        if stage != "train":
            block.pop("nodes", None)
        for toleration in block.get("tolerations") or []:
            if not toleration.get("key"):
                toleration["operator"] = "Exists"
            if toleration.get("operator") == "Exists":
                toleration.pop("value", None)
            if "tolerationSeconds" in toleration:
                toleration["effect"] = "NoExecute"


@st.composite
def accepted_runs(draw: st.DrawFn) -> Obj:
    """A FineTuneRun as the API server stores it after accepting it (defaults applied)."""
    root = crd_schema()
    spec = draw(strategy(root["properties"]["spec"], "spec"))
    repair(spec)
    spec.pop("suspend", None)  # a suspended run creates nothing
    dataset, template = spec.get("dataset") or {}, (spec.get("training") or {}).get("chatTemplate") or {}
    paths = [(spec.get("baseModel") or {}).get("uri"), dataset.get("uri"), dataset.get("structure"),
             (spec.get("storage") or {}).get("uri"), template.get("file")]
    assume(not any(isinstance(path, str) and STEPS_BACK.search(path) for path in paths))  # refused by CEL rules
    run = {"apiVersion": t.API_VERSION, "kind": t.KIND, "spec": spec, "metadata": {
        "name": draw(RUN_NAMES), "namespace": draw(NAMESPACES),
        "uid": str(uuid.UUID(int=draw(st.integers(0, 2**128 - 1)))), "generation": draw(st.integers(1, 2**63 - 1)),
        "labels": draw(st.dictionaries(LABEL_KEYS, LABEL_VALUES, max_size=3)),
        "annotations": draw(st.dictionaries(LABEL_KEYS, st.text(max_size=40), max_size=3)),
    }}
    causes = schema.admit(root, run)
    assert not causes, f"the generator drew a run the API server refuses: {causes}"
    return run


# --- what the operator writes for a run ------------------------------------------------------------------------


def resolved(run: FineTuneRun) -> Sources:
    """What the sources Job reports: the spec's sources with digests."""
    def source(uri: str, char: str) -> ResolvedSource:
        return ResolvedSource(uri=uri, digest=char * 64, revision=run.spec.base_model.revision)
    return Sources(dataset=source(run.spec.dataset.uri, "d"), template=source("bundled://template", "e"),
                   base_model=source(run.spec.base_model.uri, "b"))


def children(body: Obj, run: FineTuneRun) -> Iterator[Obj]:
    """Every object the operator writes for `run` on its way from nothing to done (each stage's Job created, then
    its output found), as reconcile.py does: the manifests of each CreateJob (its first and its last attempt), each
    status patch with its Events, and the status of the run failed on that stage by the server refusing its Job."""
    resolve = resolution_ref(run.namespace, run.name, run.spec, uid=run.uid, image=SETTINGS.job_image, refresh="")
    observed = Observed(resolve=resolve)
    previous: Obj = {}
    for _ in range(40):
        step = plan(run.namespace, run.name, run.spec, observed)
        action = step.action
        if isinstance(action, Lookup):  # nothing in the store yet
            observed = dataclasses.replace(observed, looked_up=observed.looked_up | {action.ref.key})
            continue
        notes: list[Transition] = []
        if isinstance(action, CreateJob):
            upstream = {stage: view.ref for stage, view in step.stages.items() if view.ref is not None}
            try:
                for attempt in sorted({action.attempt, MAX_ATTEMPTS}):
                    name = job_name(run.name, action.stage, action.ref.key, attempt)
                    yield from build(run, CreateJob(action.stage, action.ref, attempt, name), SETTINGS, upstream,
                                     observed.sources)
            except JobSpecError as error:
                # The one spec the operator refuses itself: one whose run config cannot fit a ConfigMap.
                assert spec_bytes(run) > CONFIG_MAP_MAX_BYTES - CONFIG_OVERHEAD, error
                yield from status_write(body, run, StatusInputs(
                    spec=run.spec, generation=run.generation, plan=failed_plan(step, action.stage, str(error)),
                    now=NOW, previous=previous), [])
                return
            notes.append(Transition("Normal", "JobCreated", f"{action.stage}: created Job {action.name}", action.stage))
            yield from status_write(body, run, StatusInputs(
                spec=run.spec, generation=run.generation, plan=failed_plan(step, action.stage, REFUSAL), now=NOW,
                previous=previous), [])
        inputs = StatusInputs(spec=run.spec, generation=run.generation, plan=step, now=NOW,
                              store_uri=SETTINGS.store_uri or "", previous=previous, sources=observed.sources)
        written = status_write(body, run, inputs, notes)
        yield from written
        previous = written[-1]["status"]
        if isinstance(action, Done):
            return
        assert isinstance(action, CreateJob), action
        if action.stage == SOURCES:
            observed = dataclasses.replace(observed, sources=resolved(run))
        else:
            done = JobState(action.name, action.stage, action.ref.key, action.attempt, "Succeeded")
            observed = dataclasses.replace(observed, jobs=(*observed.jobs, done), outputs={
                **observed.outputs, action.ref.key: Output(action.ref.key, "c" * 64)})
    raise AssertionError("the plan did not finish")


def spec_bytes(run: FineTuneRun) -> int:
    """The spec as compact UTF-8 JSON: what no run config can be smaller than."""
    return len(json.dumps(run.spec.to_manifest(), ensure_ascii=False, separators=(",", ":")).encode())


def status_write(body: Obj, run: FineTuneRun, inputs: StatusInputs, notes: list[Transition]) -> list[Obj]:
    """The Events the operator posts for a status update, then the run as its status patch leaves it (with the
    notification outbox of its transitions, which notify.py puts into the patch)."""
    update = compute_status(inputs)
    status = dict(update.status)
    if run.spec.notify.webhooks:
        entries = outbox.record(run.spec.notify, update.transitions, inputs.previous.get("notifications"),
                                uid=run.uid, generation=run.generation, now=NOW)
        if entries:
            status["notifications"] = entries
    events = [event_manifest(body, note.type, note.reason, note.message, NOW, "kubetune-operator-7d9f8-x2x4z")
              for note in [*notes, *update.transitions]]
    return [*events, {**body, "status": status}]


def refusals(obj: Obj, stored: Obj) -> list[str]:
    """What the API server answers on creating `obj` (a status write: on patching `stored`'s status): the causes
    of its 422, or its 400/403 message. Empty when it is accepted."""
    obj = copy.deepcopy(obj)
    if obj["kind"] == t.KIND:
        return schema.admit(crd_schema(), obj, stored)
    group_resource = KINDS[obj["kind"]]
    meta = obj["metadata"]
    meta["uid"] = str(uuid.uuid4())  # as the server sets it before admission
    try:
        causes = admission.name_causes(group_resource, meta["name"]) + admission.metadata_causes(meta)
        causes += [f"metadata.{field}: values must be strings" for field in ("labels", "annotations")
                   if not all(isinstance(value, str) for value in (meta.get(field) or {}).values())]
        causes += admission.admit(group_resource, obj, None, set())
        if not causes:
            admission.enforce_pod_security(group_resource, obj, RESTRICTED)
    except ApiError as error:
        return [f"{error.code} {error.reason}: {error}"]
    return causes


# Half the profile's examples: each walks a run through every stage (about 0.2 s), and the file stays well under a
# minute on 2 cores with the dev profile.
@settings(max_examples=max(10, (settings.default or settings()).max_examples // 2))
@given(accepted_runs())
# 512 KiB of text outside the BMP: its run config was 1.5 MiB with \u escapes, and the run failed.
@example({"apiVersion": t.API_VERSION, "kind": t.KIND, "metadata": {
    "name": "r" * t.RUN_NAME_MAX, "namespace": "n" * 63, "uid": str(uuid.UUID(int=7)), "generation": 1}, "spec": {
    "baseModel": {"uri": "hf://org/model", "tokenSecret": {"name": "hf", "key": ".token"}},
    "dataset": {"uri": "hf://datasets/org/chats", "format": "messages"},
    "training": {"chatTemplate": {"source": "inline", "inline": "\U0001f600" * 65536}},
    "evaluate": {"referenceText": "\U0001f600" * 65536},
    "resources": {"train": {"nodes": 256, "gpus": 64}}}})
def test_every_child_of_an_accepted_run_is_admitted(body: Obj) -> None:
    run = parse_run(body)
    for child in children(body, run):
        causes = refusals(child, body)
        assert not causes, f"{child['kind']} {child.get('metadata', {}).get('name')} refused: {causes}"

