"""Every `kubetune` command ends bad input with one line on stderr that names the file, field or store, and exit 2:
no traceback, no hang on a FIFO, nothing left behind."""

from __future__ import annotations

import contextlib
import io
import os
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from gguf import GGUFWriter

from kubetune.cli import main

RUN = "apiVersion: kubetune.dev/v1alpha1\nkind: FineTuneRun\nmetadata: {name: demo}\nspec: {}\n"


def kubetune(*args: str) -> tuple[int, list[str], list[str]]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(args))
    return code, out.getvalue().splitlines(), err.getvalue().splitlines()


def one_error_line(*args: str) -> str:
    code, _, err = kubetune(*args)
    assert code == 2, err
    [line] = [line for line in err if not line.startswith("kubetune: running ")]
    assert line.startswith("kubetune: ")
    return line


@pytest.fixture(autouse=True)
def in_tmp_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`kubetune run` keeps its state in ./.kubetune; S3 credentials come only from what a test sets."""
    monkeypatch.chdir(tmp_path)
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # no wait for an instance-metadata endpoint
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))


def manifest(tmp_path: Path, text: str = RUN) -> Path:
    path = tmp_path / "run.yaml"
    path.write_text(text)
    return path


def fifo(tmp_path: Path) -> Path:
    path = tmp_path / "pipe.yaml"
    os.mkfifo(path)
    return path


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda tmp: tmp / "missing.yaml", "missing.yaml: No such file or directory; check the path"),
        (lambda tmp: tmp, "Is a directory; pass a file"),
        (fifo, "pipe.yaml: not a regular file"),
        (lambda tmp: manifest(tmp, RUN.replace("{}", "{bogus: 1, training: {epochs: -1}}")),
         "run.yaml: spec."),
    ],
    ids=["missing manifest", "a directory", "a named pipe", "an invalid manifest"],
)
def test_run_refuses_a_manifest_it_cannot_use(tmp_path: Path, make: Callable[[Path], Path], message: str) -> None:
    line = one_error_line("run", str(make(tmp_path)))
    assert message in line
    assert not (tmp_path / ".kubetune").exists()


def test_an_invalid_manifest_is_one_line_that_counts_the_other_errors(tmp_path: Path) -> None:
    line = one_error_line("run", str(manifest(tmp_path, RUN.replace("{}", "{bogus: 1, other: 2}"))))
    assert "(and 1 more: `kubetune validate" in line


@pytest.mark.parametrize(
    ("store", "message"),
    [
        ("ftp://host/dir", "unsupported store URI scheme 'ftp'"),
        ("s3://", "needs a bucket name"),
        ("file://remote-host/dir", "must name an absolute path"),
    ],
)
def test_run_refuses_an_unusable_store_uri_before_doing_anything(tmp_path: Path, store: str, message: str) -> None:
    line = one_error_line("run", str(manifest(tmp_path)), "--store", store)
    assert line.startswith("kubetune: store: ") and message in line
    assert not (tmp_path / ".kubetune").exists()


def test_run_refuses_a_store_folder_that_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "store").write_text("not a folder")
    assert "store" in one_error_line("run", str(manifest(tmp_path)), "--store", str(tmp_path / "store"))


def test_run_names_the_store_when_s3_credentials_are_missing(tmp_path: Path) -> None:
    line = one_error_line("run", str(manifest(tmp_path)), "--store", "s3://bucket/runs")
    assert "s3://bucket/runs" in line and "credentials" in line.lower()


def test_run_names_the_endpoint_when_it_is_unreachable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        endpoint = f"http://127.0.0.1:{probe.getsockname()[1]}"
    run = manifest(tmp_path, RUN.replace("{}", f"{{storage: {{uri: 's3://bucket/runs', endpoint: '{endpoint}'}}}}"))
    line = one_error_line("run", str(run))
    assert endpoint in line and "s3://bucket/runs" in line


@pytest.mark.parametrize("name", ["../..", "a/b", "..", "UPPER", ""])
def test_status_refuses_names_that_are_not_object_names(name: str) -> None:
    assert "is not a Kubernetes object name" in one_error_line("status", name)


def test_status_of_an_unknown_run_is_one_line() -> None:
    assert "no local run default/nowhere" in one_error_line("status", "nowhere")


def test_crd_to_a_folder_is_one_line(tmp_path: Path) -> None:
    assert "Is a directory" in one_error_line("crd", "-o", str(tmp_path))


# --- GGUF targets -----------------------------------------------------------------------------------------------------

def write_gguf(path: Path, *, architecture: str | None = "llama", tensors: bool = True) -> Path:
    writer = GGUFWriter(str(path), architecture or "llama")
    if architecture is None:
        writer.kv_data[0].pop("general.architecture")
    if tensors:
        writer.add_tensor("token_embd.weight", np.zeros((4, 32), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def truncated(tmp: Path) -> Path:
    path = tmp / "cut.gguf"
    path.write_bytes(write_gguf(tmp / "whole.gguf").read_bytes()[:200])
    return path


def text_file(tmp: Path) -> Path:
    path = tmp / "text.gguf"
    path.write_text("hello")
    return path


def folder(tmp: Path) -> Path:
    path = tmp / "folder.gguf"
    path.mkdir()
    return path


@pytest.mark.parametrize("command", ["ask", "check"])
@pytest.mark.parametrize(
    ("make", "message"),
    [
        (truncated, "not a valid GGUF file: truncated"),
        (text_file, "not a GGUF file"),
        (lambda tmp: write_gguf(tmp / "vocab.gguf", tensors=False), "holds no tensors"),
        (lambda tmp: write_gguf(tmp / "anon.gguf", architecture=None), "no general.architecture"),
        (lambda tmp: tmp / "missing.gguf", "missing.gguf: No such file or directory"),
        (folder, "a directory"),
    ],
    ids=["truncated", "not a GGUF", "vocabulary only", "no architecture", "missing", "a directory"],
)
def test_a_gguf_llama_cpp_should_not_see_is_refused_before_it_does(
    tmp_path: Path, command: str, make: Callable[[Path], Path], message: str
) -> None:
    gguf = make(tmp_path)
    args = [command, str(gguf), "hello"] if command == "ask" else [command, str(gguf), "--run", str(manifest(tmp_path))]
    line = one_error_line(*args)
    assert str(gguf) in line and message in line


def test_ask_reports_a_model_llama_cpp_refuses_as_one_line(tmp_path: Path) -> None:
    """A well-formed GGUF whose model llama.cpp cannot build (no hyper-parameters): its own error, from the child."""
    gguf = write_gguf(tmp_path / "hollow.gguf")
    line = one_error_line("ask", str(gguf), "hello")
    assert str(gguf) in line and "llama.cpp" in line


def test_ask_refuses_an_absurd_token_count() -> None:
    with pytest.raises(SystemExit) as exit_info, contextlib.redirect_stderr(io.StringIO()) as err:
        main(["ask", "model.gguf", "hello", "--max-tokens", "-5"])
    assert exit_info.value.code == 2 and "--max-tokens: must be a whole number from 1 to 2048" in err.getvalue()


def test_a_closed_stdout_pipe_is_not_a_traceback() -> None:
    reader = subprocess.Popen([sys.executable, "-P", "-m", "kubetune.cli", "crd"], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE)
    assert reader.stdout is not None and reader.stderr is not None
    reader.stdout.read(64)
    reader.stdout.close()  # as `kubetune crd | head -c 64` does
    stderr = reader.stderr.read().decode()
    reader.wait(timeout=60)
    assert "Traceback" not in stderr, stderr


def test_ask_reports_a_llama_cpp_crash_as_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """llama.cpp aborts on some corrupt files (a failed GGML_ASSERT): the child dies, the command says why."""
    import kubetune.ask

    gguf = write_gguf(tmp_path / "model.gguf")

    def child_aborts(argv: list[str], **_: object) -> subprocess.CompletedProcess[str]:
        assert argv[1:] == ["-P", "-m", "kubetune.llama.answer"]
        return subprocess.CompletedProcess(argv, -6, "", "llama_model_load: loading\nggml.c:123: GGML_ASSERT(ne % 32 == 0) failed\n")

    monkeypatch.setattr(kubetune.ask.subprocess, "run", child_aborts)
    line = one_error_line("ask", str(gguf), "hello")
    assert f"{gguf}: llama.cpp crashed (SIGABRT)" in line and "GGML_ASSERT(ne % 32 == 0) failed" in line


@pytest.mark.parametrize("content", ["{cut short", "[]", '{"status": 7, "metadata": "x"}', "[" * 100_000])
def test_status_of_a_damaged_status_file_is_one_line(tmp_path: Path, content: str) -> None:
    path = tmp_path / ".kubetune" / "runs" / "default" / "demo" / "status.json"
    path.parent.mkdir(parents=True)
    path.write_text(content)
    assert "not a status kubetune run wrote" in one_error_line("status", "demo")
