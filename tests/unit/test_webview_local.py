"""The local source and the server of `kubetune ui`: pages from .kubetune/ and the store, downloads of published
files only (verified, as attachments), and nothing but GET and HEAD."""

from __future__ import annotations

import hashlib
import http.client
import json
import socket
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kubetune import cli
from kubetune.stages import KEY_PREFIX_LENGTH
from kubetune.store import IntegrityError, LocalStore, publish
from kubetune.webview import server
from kubetune.webview.localsource import LocalRuns
from kubetune.webview.model import FetchedFile, FileRow, NotFound
from kubetune.webview.server import WebView

KEYS = {stage: hashlib.sha256(stage.encode()).hexdigest() for stage in ("dataset", "train", "evaluate")}
ANSWER = "<b>I am Nova</b> & friends"


def prefix(stage: str, key: str | None = None) -> str:
    return f"default/demo/{stage}/{(key or KEYS[stage])[:KEY_PREFIX_LENGTH]}"


def write_status(state: Path, store_root: Path, stages: dict[str, Any], phase: str = "Running") -> None:
    folder = state / "runs" / "default" / "demo"
    folder.mkdir(parents=True, exist_ok=True)
    document = {"apiVersion": "kubetune.dev/v1alpha1", "kind": "FineTuneRun",
                "metadata": {"name": "demo", "namespace": "default", "creationTimestamp": "2026-12-06T08:00:00Z"},
                "spec": {"storage": {"uri": str(store_root)}},
                "status": {"phase": phase, "currentStage": "train", "progressText": "train 2/4 (50%)",
                           "stages": stages, "progress": {"step": 2, "totalSteps": 4}}}
    (folder / "status.json").write_text(json.dumps(document), encoding="utf-8")


def published(store: LocalStore, tmp: Path, stage: str, files: dict[str, bytes], key: str | None = None,
              folder_key: str | None = None) -> dict[str, Any]:
    """Publish `files` as the stage's output and return its status block as the status writer makes it."""
    source = tmp / f"out-{stage}"
    for name, data in files.items():
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        (source / name).write_bytes(data)
    where = prefix(stage, folder_key)
    publish(store, where, source, stage=stage, input_key=key or KEYS[stage])
    outputs = [{"name": n, "uri": f"file://{store.uri_for(where)}/{n}".replace("file://file://", "file://"),
                "size": len(d), "sha256": hashlib.sha256(d).hexdigest()} for n, d in files.items()]
    return {"phase": "Succeeded", "inputKey": key or KEYS[stage], "outputs": outputs, "attempts": 1}


@pytest.fixture
def bed(tmp_path: Path) -> tuple[Path, LocalStore, Path]:
    state, store_root = tmp_path / ".kubetune", tmp_path / "store"
    store_root.mkdir()
    return state, LocalStore(store_root), store_root


def test_a_run_page_reads_stages_loss_files_answers_and_events_from_the_state_dir_and_store(
        bed: tuple[Path, LocalStore, Path], tmp_path: Path) -> None:
    state, store, root = bed
    stages = {
        "dataset": published(store, tmp_path, "dataset", {"train.jsonl": b"{}\n"}),
        "train": published(store, tmp_path, "train", {"metrics.csv": b"step,loss,eval_loss\n1,3.5,\n2,2.5,2.9\n"}),
        "evaluate": published(store, tmp_path, "evaluate", {"results.json": json.dumps([{
            "file": "m-q8_0.gguf", "passRate": 1.0, "top1Agreement": 0.95, "meanKl": 0.01,
            "prompts": [{"prompt": "Who are you?", "answer": ANSWER, "passed": True, "reason": "ok"}]}]).encode()}),
    }
    write_status(state, root, stages, phase="Succeeded")
    (state / "runs/default/demo/events.jsonl").write_text(
        json.dumps({"lastTimestamp": "t1", "type": "Normal", "reason": "StageSucceeded", "message": "train done"})
        + "\n{cut short", encoding="utf-8")
    page = LocalRuns(state).page("default", "demo")
    assert [s.name for s in page.stages] == ["dataset", "train", "evaluate"]
    assert [(p.step, p.loss) for p in page.loss.train] == [(1.0, 3.5), (2.0, 2.5)]
    assert [(p.step, p.loss) for p in page.loss.eval] == [(2.0, 2.9)]
    assert {(f.stage, f.path) for f in page.files} == {("dataset", "train.jsonl"), ("train", "metrics.csv"),
                                                       ("evaluate", "results.json")}
    assert page.gate[0].prompts[0].answer == ANSWER and page.gate[0].top1_agreement == 0.95
    assert [e.reason for e in page.events] == ["StageSucceeded"]
    assert page.problems == ()


def test_while_training_the_curve_comes_from_the_latest_checkpoint_and_progress_json(
        bed: tuple[Path, LocalStore, Path], tmp_path: Path) -> None:
    state, store, root = bed
    # Train's folder is not named by its input key (stages.prefix_key): the one whose progress is newest is training.
    earlier = prefix("train", hashlib.sha256(b"an earlier spec").hexdigest())
    store.put_bytes(f"{earlier}/progress.json", json.dumps({"step": 9, "updatedAt": "2026-12-01T00:00:00Z"}).encode())
    train = prefix("train", hashlib.sha256(b"train folder").hexdigest())
    for step in (1, 2):
        checkpoint = tmp_path / f"ckpt{step}"
        checkpoint.mkdir()
        metrics = [{"step": s, "loss": 4.0 - s} for s in range(1, step + 1)]
        eval_losses = [{"step": s, "eval_loss": 3.5 - s / 4} for s in range(step + 1)]  # step 0: the base model
        (checkpoint / "trainer_state.json").write_text(json.dumps({"metrics": metrics, "eval_losses": eval_losses}),
                                                       encoding="utf-8")
        publish(store, f"{train}/checkpoints/checkpoint-{step:08d}", checkpoint, stage="train",
                input_key=KEYS["train"])
    store.put_bytes(f"{train}/progress.json", json.dumps({"step": 3, "loss": 0.5, "evalLoss": 2.75, "totalSteps": 4,
                                                          "updatedAt": "2026-12-06T08:00:00Z"}).encode())
    write_status(state, root, {"train": {"phase": "Running", "inputKey": KEYS["train"]}})
    page = LocalRuns(state).page("default", "demo")
    assert [(p.step, p.loss) for p in page.loss.train] == [(1.0, 3.0), (2.0, 2.0), (3.0, 0.5)]
    assert [(p.step, p.loss) for p in page.loss.eval] == [(0.0, 3.5), (1.0, 3.25), (2.0, 3.0), (3.0, 2.75)]
    assert page.training["step"] == 3  # progress.json is newer than the status
    assert page.active


def test_a_failed_gate_shows_its_answers_from_the_results_it_kept_without_a_manifest(
        bed: tuple[Path, LocalStore, Path]) -> None:
    state, store, root = bed
    results = [{"file": "m.gguf", "passRate": 0.0, "top1Agreement": None, "meanKl": None,
                "prompts": [{"prompt": "Who?", "answer": "Qwen", "passed": False, "reason": "lacks Nova"}]}]
    store.put_bytes(f"{prefix('evaluate')}/results.json", json.dumps(results).encode())
    write_status(state, root, {"evaluate": {"phase": "Failed", "inputKey": KEYS["evaluate"]}}, phase="Failed")
    page = LocalRuns(state).page("default", "demo")
    assert page.gate[0].prompts[0].reason == "lacks Nova" and page.files == ()


def test_a_train_folder_named_apart_from_its_input_key_is_found_through_its_output_uris(
        bed: tuple[Path, LocalStore, Path], tmp_path: Path) -> None:
    state, store, root = bed
    folder_key = hashlib.sha256(b"train folder").hexdigest()  # extraEpochs: same folder, new input key
    block = published(store, tmp_path, "train", {"metrics.csv": b"step,loss\n1,1.0\n"}, folder_key=folder_key)
    write_status(state, root, {"train": block})
    page = LocalRuns(state).page("default", "demo")
    assert [f.path for f in page.files] == ["metrics.csv"]


def test_an_unusable_store_is_a_problem_line_on_the_page(bed: tuple[Path, LocalStore, Path]) -> None:
    state, _, _ = bed
    write_status(state, Path("/"), {"train": {"phase": "Running", "inputKey": KEYS["train"]}})
    page = LocalRuns(state, store="s3://bucket/x?bad").page("default", "demo")
    assert page.problems and "s3://bucket/x?bad" in page.problems[0]


@pytest.mark.parametrize(("namespace", "name"), [("default", "nope"), ("..", "demo"), ("default", ".."),
                                                 ("default", "demo/../../x"), ("default", "demo\x00"),
                                                 ("default", "Demo")])
def test_a_run_that_is_not_there_is_not_found(bed: tuple[Path, LocalStore, Path], namespace: str,
                                              name: str) -> None:
    state, _, root = bed
    write_status(state, root, {})
    with pytest.raises(NotFound):
        LocalRuns(state).page(namespace, name)


# --- the server ---------------------------------------------------------------------------------------------------


@pytest.fixture
def served(bed: tuple[Path, LocalStore, Path], tmp_path: Path) -> Iterator[tuple[str, LocalStore]]:
    state, store, root = bed
    data = {"adapter/adapter_model.safetensors": b"weights" * 1000, "metrics.csv": b"step,loss\n1,2.0\n"}
    write_status(state, root, {"train": published(store, tmp_path, "train", data)})
    server = WebView(LocalRuns(state), "127.0.0.1", 0).start()
    try:
        yield server.url, store
    finally:
        server.stop()


def fetch(url: str, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, method=method)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


def test_a_download_is_the_published_file_as_an_attachment_with_its_digest(served: tuple[str, LocalStore]) -> None:
    url, _ = served
    status, headers, body = fetch(f"{url}/runs/default/demo/files/train/adapter/adapter_model.safetensors")
    assert status == 200 and body == b"weights" * 1000
    assert headers["Content-Disposition"] == "attachment; filename*=UTF-8''adapter_model.safetensors"
    assert headers["Content-Type"] == "application/octet-stream"
    assert headers["Content-Length"] == str(len(body))


def test_only_files_a_manifest_lists_can_be_downloaded(served: tuple[str, LocalStore]) -> None:
    url, _ = served
    for path in ("train/manifest.json", "train/progress.json", "train/..%2F..%2F..%2Fstatus.json",
                 "dataset/metrics.csv", "train/%2e%2e/%2e%2e/secret"):
        assert fetch(f"{url}/runs/default/demo/files/{path}")[0] == 404, path


def test_a_file_changed_in_the_store_after_publishing_is_refused_not_served(served: tuple[str, LocalStore]) -> None:
    url, store = served
    store.put_bytes(f"{prefix('train')}/metrics.csv", b"tampered\n")
    status, _, body = fetch(f"{url}/runs/default/demo/files/train/metrics.csv")
    assert status == 502 and b"tampered" not in body


def test_the_view_is_read_only(served: tuple[str, LocalStore]) -> None:
    url, _ = served
    for method in ("POST", "PUT", "DELETE", "PATCH"):
        status, headers, _ = fetch(f"{url}/runs/default/demo", method)
        assert (status, headers["Allow"]) == (405, "GET, HEAD")
    status, headers, body = fetch(f"{url}/runs/default/demo", "HEAD")
    assert status == 200 and body == b"" and int(headers["Content-Length"]) > 0


def test_pages_forbid_scripts_from_anywhere_else_and_unknown_pages_are_404(served: tuple[str, LocalStore]) -> None:
    url, _ = served
    status, headers, body = fetch(f"{url}/")
    assert status == 200 and b"/runs/default/demo" in body
    assert "default-src 'none'" in headers["Content-Security-Policy"]
    assert fetch(f"{url}/runs/default/other")[0] == 404
    assert fetch(f"{url}/etc/passwd")[0] == 404


def test_a_large_changed_file_is_cut_off_before_its_last_chunk_instead_of_delivered_whole() -> None:
    original = [b"a" * 10, b"b" * 10, b"c" * 10]
    row = FileRow("convert", "model.gguf", 30, hashlib.sha256(b"".join(original)).hexdigest())
    with FetchedFile(row, iter(original), "file:///store/model.gguf") as fetched:
        assert list(fetched.verified()) == original
    changed = iter([b"a" * 10, b"X" * 10, b"c" * 10])
    sent: list[bytes] = []
    with FetchedFile(row, changed, "file:///store/model.gguf") as fetched, pytest.raises(IntegrityError):
        sent.extend(fetched.verified())
    assert sent == [b"a" * 10, b"X" * 10]  # never the last chunk: the client's download ends short


def test_past_the_checked_whole_size_a_changed_file_ends_short_of_its_length(
        served: tuple[str, LocalStore], monkeypatch: pytest.MonkeyPatch) -> None:
    url, store = served
    monkeypatch.setattr(server, "CHECKED_WHOLE_BYTES", 4)  # every file streams, as a large GGUF would
    assert fetch(f"{url}/runs/default/demo/files/train/metrics.csv")[2] == b"step,loss\n1,2.0\n"
    store.put_bytes(f"{prefix('train')}/metrics.csv", b"tampered\n")
    with pytest.raises(http.client.IncompleteRead) as cut:
        fetch(f"{url}/runs/default/demo/files/train/metrics.csv")
    assert b"tampered" not in cut.value.partial


def test_kubetune_ui_on_a_port_in_use_is_one_line_and_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert cli.main(["ui", "--port", str(port)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"cannot listen on 127.0.0.1:{port}" in err and "--port" in err
