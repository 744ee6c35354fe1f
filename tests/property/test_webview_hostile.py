"""`kubetune ui`, `kubetune status` and `kubetune ask` against hostile requests and hand-edited run files, on a run
whose dataset stage really ran (its status.json, events.jsonl and store as `kubetune run` wrote them).

- Any request path (percent-escapes, `..`, NUL, odd query strings) is a page, a 404 or a 405: never a 500, and a
  download only ever sends a file the stage's manifest lists, byte for byte.
- A status.json or events.jsonl edited by hand (any value anywhere: a list where an object belongs, a text count,
  an infinite ETA) still shows the index and the run's page: `metadata: "x"`, `attempts: "x"` and `etaSeconds:
  Infinity` were 500 pages (AttributeError, ValueError, OverflowError), though the view promises a problem line,
  never an error page. `kubetune status` prints it or says in one line that kubetune did not write it; so does
  `kubetune ask` (a KeyError, TypeError or AttributeError traceback before), which never follows a GGUF's folder
  out of the run's convert outputs.
- `kubetune ask MANIFEST` reads the manifest as `kubetune run` did, `./` paths relative to its folder (it refused
  them as a server would, so `kubetune ask examples/local-messages.yaml …` could not work).
"""

from __future__ import annotations

import contextlib
import copy
import http.client
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kubetune.webview.localsource import LocalRuns
from kubetune.webview.server import WebView
from tests.property.cli_inputs import dataset_run, kubetune

RUN = "/runs/default/hostile"


@dataclass(frozen=True)
class View:
    root: Path
    server: WebView
    status: dict[str, Any]  # status.json as kubetune run wrote it
    published: dict[str, bytes]  # the dataset stage's files by name

    def get(self, path: str, method: str = "GET") -> tuple[int, bytes]:
        host, port = str(self.server.server_address[0]), int(self.server.server_address[1])
        connection = http.client.HTTPConnection(host, port, timeout=20)
        try:
            connection.putrequest(method, path, skip_host=False, skip_accept_encoding=True)
            connection.endheaders()
            response = connection.getresponse()
            return response.status, response.read()
        finally:
            connection.close()


@pytest.fixture(scope="module")
def view() -> Iterator[View]:
    with dataset_run("kubetune-hostile-") as root:
        state = root / ".kubetune"
        status = json.loads((state / "runs" / "default" / "hostile" / "status.json").read_text(encoding="utf-8"))
        [output] = (root / "store" / "default" / "hostile" / "dataset").iterdir()
        published = {path.name: path.read_bytes() for path in output.iterdir()}
        server = WebView(LocalRuns(state.resolve(), str((root / "store").resolve())), "127.0.0.1", 0).start()
        try:
            yield View(root, server, status, published)
        finally:
            server.stop()


def test_the_view_shows_the_run_and_serves_its_files(view: View) -> None:
    assert view.get("/")[0] == 200 and view.get(RUN)[0] == 200
    assert view.get(f"{RUN}/files/dataset/train_data.jsonl") == (200, view.published["train_data.jsonl"])


path_part = st.one_of(
    st.sampled_from(["runs", "default", "hostile", "files", "dataset", "train", "train_data.jsonl", "stats.json",
                     "manifest.json", "progress.json", "lineage.json", "..", ".", "", "%2e%2e", "%2F", "%00", "%ff",
                     "%", "%%", "%u002e", "..%2f..%2fetc%2fpasswd", "~", "healthz", "run.yaml", ".kubetune"]),
    st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7e, exclude_characters="#?"), max_size=12),
)
query = st.one_of(st.just(""), st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7e), max_size=20)
                  .map(lambda text: "?" + text))


@given(parts=st.lists(path_part, max_size=8), tail=query, method=st.sampled_from(["GET", "HEAD", "POST"]))
def test_any_request_path_is_a_page_or_a_404_and_never_serves_an_unlisted_file(
        view: View, parts: list[str], tail: str, method: str) -> None:
    path = "/" + "/".join(parts) + tail
    status, body = view.get(path, method)
    assert status in (200, 404, 405), (path, status, body[:300])
    if status == 200 and method == "GET" and len(parts) >= 5 and parts[3] == "files":
        assert body in view.published.values(), path


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3),
    max_leaves=8)
HOT_FIELDS = [("metadata",), ("status",), ("status", "stages"), ("status", "stages", "dataset"),
              ("status", "stages", "dataset", "attempts"), ("status", "stages", "dataset", "outputs"),
              ("status", "stages", "train"), ("status", "stages", "train", "inputKey"), ("status", "progress"),
              ("status", "progress", "etaSeconds"), ("status", "phase"), ("metadata", "name")]


@st.composite
def edited_status(draw: st.DrawFn, original: dict[str, Any]) -> Any:
    """The status with a field kubetune reads (or any field on the way down) replaced by any JSON value."""
    document: Any = copy.deepcopy(original)
    if draw(st.integers(0, 9)) == 0:
        return draw(json_values)
    path = draw(st.sampled_from(HOT_FIELDS))
    node = document
    for key in path[:-1]:
        if not isinstance(node.get(key), dict):
            node[key] = {}
        node = node[key]
    node[path[-1]] = draw(json_values | st.sampled_from([float("inf"), float("nan"), -1e308, 10**30, "x", [], ""]))
    return document


@given(data=st.data(), events=st.lists(json_values, max_size=3))
def test_a_hand_edited_status_or_events_file_still_shows_the_pages(view: View, data: st.DataObject,
                                                                   events: list[Any]) -> None:
    folder = view.root / ".kubetune" / "runs" / "default" / "hostile"
    document = data.draw(edited_status(view.status))
    try:
        (folder / "status.json").write_text(json.dumps(document), encoding="utf-8")
        (folder / "events.jsonl").write_text("".join(json.dumps(event) + "\n" for event in events), encoding="utf-8")
        index, run = view.get("/"), view.get(RUN)
    finally:
        (folder / "status.json").write_text(json.dumps(view.status), encoding="utf-8")
    assert index[0] == 200, index[1][:300]
    assert run[0] in (200, 404), run[1][:300]  # 404: a document that is no object names no run


@given(data=st.data())
def test_kubetune_status_on_a_hand_edited_status_shows_it_or_says_so_in_one_line(view: View,
                                                                                  data: st.DataObject) -> None:
    status_file = view.root / ".kubetune" / "runs" / "default" / "hostile" / "status.json"
    try:
        status_file.write_text(json.dumps(data.draw(edited_status(view.status))), encoding="utf-8")
        with contextlib.chdir(view.root):
            code, err = kubetune("status", "hostile")
    finally:
        status_file.write_text(json.dumps(view.status), encoding="utf-8")
    assert code == 0 and err == [] or code == 2 and len(err) == 1 and "not a status kubetune run wrote" in err[0], err


CONVERTED = "default/hostile/convert/0123456789abcdef/hostile.q8_0.gguf"
convert_outputs = st.lists(st.one_of(json_values, st.fixed_dictionaries({}, optional={
    "name": st.sampled_from(["hostile.q8_0.gguf", "a.gguf", "", 1, None]),
    "uri": st.sampled_from([f"/store/{CONVERTED}", f"s3://b/{CONVERTED}", "/store/default/hostile/../../../etc/a.gguf",
                            "/store/default/hostile/convert/../../x/a.gguf", "/store/default/hostile/", "", 7]),
})), max_size=3)


@given(outputs=convert_outputs, data=st.data())
def test_kubetune_ask_on_a_hand_edited_status_is_one_line_and_reads_nothing_outside_the_run(
        view: View, outputs: list[Any], data: st.DataObject) -> None:
    status_file = view.root / ".kubetune" / "runs" / "default" / "hostile" / "status.json"
    document = data.draw(edited_status(view.status))
    if isinstance(document, dict) and isinstance(document.get("status"), dict) and data.draw(st.booleans()):
        stages = document["status"].setdefault("stages", {})
        if isinstance(stages, dict):
            stages["convert"] = {"outputs": outputs}
    try:
        status_file.write_text(json.dumps(document), encoding="utf-8")
        with contextlib.chdir(view.root):
            code, err = kubetune("ask", "run.yaml", "Who are you?", "--store", "store")
    finally:
        status_file.write_text(json.dumps(view.status), encoding="utf-8")
    assert code == 2 and len(err) == 1 and err[0].startswith("kubetune: "), err
    assert "/etc/" not in err[0], err


def test_kubetune_ask_reads_the_manifest_as_kubetune_run_did(view: View) -> None:
    # Its ./ paths are relative to its folder, as for `kubetune run` (ask refused them as a server would).
    with contextlib.chdir(view.root):
        code, err = kubetune("ask", "run.yaml", "Who are you?", "--store", "store")
    assert (code, err) == (2, ["kubetune: default/hostile has no GGUF yet: run `kubetune run` first"])
