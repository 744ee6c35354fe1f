"""`kubetune validate` on generated manifests: valid ones are accepted, hostile ones get one line per error and exit 1,
and nothing ever ends in a traceback (the command runs in-process, so any exception fails the property)."""

from __future__ import annotations

import contextlib
import io
import json
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, get_args

import yaml
from hypothesis import given
from hypothesis import strategies as st

from kubetune.api import types as t
from kubetune.api.manifest_yaml import KUBECTL_RESOLVERS
from kubetune.api.objectmeta import is_qualified_name
from kubetune.cli import main

Doc = dict[str, Any]


@contextlib.contextmanager
def manifest_file() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="kubetune-hostile-") as folder:
        yield Path(folder) / "run.yaml"


def validate(path: Path, data: bytes) -> tuple[int, list[str], list[str]]:
    path.write_bytes(data)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["validate", str(path)])
    return code, out.getvalue().splitlines(), err.getvalue().splitlines()


class KubectlDumper(yaml.SafeDumper):
    """Quotes every string kubectl would read as something else (`n`, `y`, `0o7`...), as a careful author would."""


KubectlDumper.yaml_implicit_resolvers = KUBECTL_RESOLVERS


def as_yaml(doc: Any) -> bytes:
    text = yaml.dump(doc, Dumper=KubectlDumper, sort_keys=False, allow_unicode=False, width=1_000_000)
    return text.encode("utf-8", "surrogatepass")


def as_json(doc: Any) -> bytes:
    return json.dumps(doc).encode("utf-8")


def regex(pattern: str, max_size: int) -> st.SearchStrategy[str]:
    return st.from_regex(pattern, fullmatch=True).filter(lambda text: len(text) <= max_size)


# --- valid manifests ------------------------------------------------------------------------------------------------

# Any character but surrogates: values are free text unless a pattern says otherwise.
free_text = st.text(st.characters(exclude_categories=["Cs"]), min_size=1, max_size=30)
# A URI path segment as the URI patterns allow it: no control, space, '?', '#', '\\', '/' or '%'.
segment = st.text(st.characters(exclude_categories=["Cs"], min_codepoint=0x21, exclude_characters="\x7f?#\\/%"),
                  min_size=1, max_size=12).filter(lambda text: text != "..")
label_keys = regex(t.LABEL_KEY, 317).filter(is_qualified_name)
label_values = regex(t.LABEL_VALUE, 63)
bucket = regex(r"[a-z0-9][-a-z0-9]{1,20}[a-z0-9]", 22)


def path_uri(prefixes: tuple[str, ...]) -> st.SearchStrategy[str]:
    return st.builds(lambda prefix, parts: prefix + "/".join(parts), st.sampled_from(prefixes),
                     st.lists(segment, min_size=1, max_size=4))


def s3_uri() -> st.SearchStrategy[str]:
    return st.builds(lambda name, parts: f"s3://{name}/" + "/".join(parts), bucket, st.lists(segment, max_size=3))


base_models = st.one_of(
    st.just({}),
    st.builds(lambda uri: {"uri": uri}, st.one_of(path_uri(("/", "file:///")), s3_uri())),
    st.builds(lambda org, rev, secret: {"uri": f"hf://{org}/model", "revision": rev,
                                        **({"tokenSecret": {"name": "hf", "key": "token"}} if secret else {})},
              regex(r"[A-Za-z0-9][-A-Za-z0-9_.]{0,10}", 11), regex(t.GIT_REVISION, 40), st.booleans()),
)
datasets = st.fixed_dictionaries({}, optional={
    "uri": st.one_of(st.just("bundled"), path_uri(("/", "file:///")), s3_uri()),
    "structure": regex(r"[a-z][a-z0-9_/.-]{0,20}\.json", 30).filter(lambda text: ".." not in text),
    "placeholders": st.dictionaries(regex(t.PLACEHOLDER_NAME, 20), free_text, max_size=4),
    "categories": st.lists(regex(t.CATEGORY_NAME, 20), max_size=4),
    "maxSeqLength": st.integers(32, 131072),
    "evalSplit": st.floats(0.0, 0.5),
})
trainings = st.one_of(
    st.fixed_dictionaries({"method": st.just("qlora")}, optional={
        "fp8": st.booleans(), "quantization": st.fixed_dictionaries({"type": st.sampled_from(["nf4", "fp4"])})}),
    st.just({"method": "lora"}),
).flatmap(lambda base: st.fixed_dictionaries({**{k: st.just(v) for k, v in base.items()}}, optional={
    "epochs": st.floats(0.0, 1000.0, exclude_min=True),
    "maxSteps": st.integers(1, 10_000_000),
    "learningRate": st.floats(0.0, 1.0, exclude_min=True),
    "batchSize": st.integers(1, 4096),
    "lora": st.fixed_dictionaries({}, optional={"r": st.integers(1, 1024), "dropout": st.floats(0.0, 0.99)}),
    "stopSequences": st.lists(free_text, max_size=3),
}))
resources = st.fixed_dictionaries({}, optional={
    "gpus": st.integers(0, 64),
    "cpu": regex(t.QUANTITY, 32),
    "nodeSelector": st.dictionaries(label_keys, label_values, max_size=3),
    "queueName": regex(t.DNS_LABEL, 63),
})
specs = st.fixed_dictionaries({}, optional={
    "suspend": st.booleans(),
    "baseModel": base_models,
    "dataset": datasets,
    "training": trainings,
    "export": st.fixed_dictionaries({"types": st.lists(st.sampled_from(get_args(t.GgufType)), min_size=1,
                                                       max_size=4, unique=True)}),
    "storage": st.one_of(st.builds(lambda uri: {"uri": uri}, path_uri(("/", "file:///"))),
                         st.builds(lambda uri, port: {"uri": uri, "endpoint": f"http://minio:{port}/", "pathStyle": True},
                                   s3_uri(), st.integers(1, 65535))),
    "resources": st.fixed_dictionaries({}, optional={"defaults": resources, "train": resources}),
})
metadata = st.fixed_dictionaries({"name": regex(t.RUN_NAME_PATTERN, t.RUN_NAME_MAX)}, optional={
    "namespace": regex(t.DNS_LABEL, 63),
    "labels": st.dictionaries(label_keys, label_values, max_size=3),
    "annotations": st.dictionaries(label_keys, free_text, max_size=3),
    "generation": st.integers(0, 2**62),
})
valid_manifests = st.builds(lambda meta, spec: {"apiVersion": t.API_VERSION, "kind": t.KIND, "metadata": meta,
                                                "spec": spec}, metadata, specs)


@given(valid_manifests, st.sampled_from([as_yaml, as_json]))
def test_a_valid_manifest_is_never_refused(doc: Doc, serialize: Callable[[Any], bytes]) -> None:
    with manifest_file() as path:
        code, out, err = validate(path, serialize(doc))
    assert (code, err) == (0, []), f"{doc!r} refused"
    namespace = doc["metadata"].get("namespace", "default")
    assert out == [f"{path}: FineTuneRun {namespace}/{doc['metadata']['name']} is valid"]


# --- hostile manifests ----------------------------------------------------------------------------------------------

lone_surrogates = st.sampled_from(["\ud800", "x\udfff", "\udbff\u00e9"])
odd_text = st.one_of(st.text(st.characters(), max_size=20), lone_surrogates,
                     st.sampled_from(["demo\n", " demo", "déjà-vu", "\u2028", "\x00", "a" * 5000, "${NAME}", "~", ""]))
traversal_uris = st.sampled_from([
    "file:///data/%2e%2e/%2E%2E/etc", "/data/..%2fetc", "s3://bucket/a/../../b", "file:///d/%252e%252e",
    "s3://bucket/x?versionId=1", "file:///d#frag", "hf://user:secret@org/name", "hf://org/name@../..", "/d/%00",
])
scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.integers(min_value=2**63),
                    st.floats(allow_nan=True, allow_infinity=True), odd_text, traversal_uris)
hostile_values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.one_of(odd_text, st.integers(), st.booleans()), inner, max_size=3)),
    max_leaves=8)
hostile_keys = st.one_of(odd_text, st.integers(), st.booleans(), st.none(), st.floats(allow_nan=False))


def containers(node: Any) -> list[Any]:
    found = [node] if isinstance(node, (dict, list)) and node else []
    children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else []
    for child in children:
        found += containers(child)
    return found


# Each line eight times the one before: 8**6 values once expanded.
ALIAS_BOMB = b"a: &a [x, x, x, x, x, x, x, x]\n" + b"".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 8)}]\n".encode() for i in range(5))


@st.composite
def hostile_documents(draw: st.DrawFn) -> bytes:
    doc: Any = draw(valid_manifests)
    for _ in range(draw(st.integers(1, 4))):
        target = draw(st.sampled_from(containers(doc)))
        if isinstance(target, list):
            target[draw(st.integers(0, len(target) - 1))] = draw(hostile_values)
        elif draw(st.booleans()):
            target[draw(st.sampled_from(sorted(target, key=str)))] = draw(hostile_values)
        else:
            target[draw(hostile_keys)] = draw(hostile_values)
    data = draw(st.sampled_from([as_yaml, as_json]))(doc) if draw(st.booleans()) else as_yaml(doc)
    tail = draw(st.sampled_from([
        b"", b"kind: FineTuneRun\n", b"metadata: {name: twice}\n", b"spec: {}\n  bad: indent\n",
        b"extra: " + b"[" * 3000 + b"]" * 3000 + b"\n", b"extra: " + b"{a: " * 400 + b"1" + b"}" * 400 + b"\n",
        b"---\n" + as_yaml({"apiVersion": "v1", "kind": "ConfigMap"}), b"\xff\xfe", b"spec: !!python/object:os.system {}\n",
        ALIAS_BOMB,
    ]))
    return data + tail


@given(hostile_documents())
def test_a_hostile_manifest_gets_one_line_per_error_and_never_a_traceback(data: bytes) -> None:
    with manifest_file() as path:
        code, out, err = validate(path, data)
    if code == 0:
        assert err == [] and out and all(line.endswith(" is valid") for line in out)
    else:
        assert code == 1 and err, "exit 1 says why"
        assert all(line.startswith(str(path)) for line in err), err


@given(valid_manifests, st.sampled_from(["dataset", "baseModel", "storage"]), traversal_uris)
def test_an_escaping_uri_is_always_refused_at_its_field(doc: Doc, section: str, uri: str) -> None:
    doc["spec"][section] = {"uri": uri}
    with manifest_file() as path:
        code, _, err = validate(path, as_yaml(doc))
    assert code == 1 and any(f"spec.{section}.uri: " in line for line in err), err


@given(valid_manifests, st.sampled_from(["\n", "\r\n", " ", "\t", "\u00a0"]))
def test_a_name_or_label_with_trailing_whitespace_is_refused(doc: Doc, tail: str) -> None:
    doc["metadata"]["name"] += tail
    doc["metadata"]["labels"] = {"team": "ml" + tail}
    with manifest_file() as path:
        code, _, err = validate(path, as_yaml(doc))
    assert code == 1
    assert any("metadata.name must be a DNS-1035 label" in line for line in err), err
    assert any("metadata.labels: value of 'team'" in line for line in err), err
