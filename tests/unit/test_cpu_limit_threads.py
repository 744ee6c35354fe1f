"""Every thread pool a stage starts follows the CPUs the process may use (a pod's CPU limit, `kubetune.cpus`), not
the node's core count: torch in every stage that imports it, the GGUF encoder's pool, llama.cpp's quantizer and
llama.cpp's inference threads."""

from __future__ import annotations

import ctypes
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

import kubetune.jobs.__main__ as jobs_main
from kubetune.llama import checks, parallel_encode, quantize

LIMIT = 1  # a pod limited to one CPU, whatever the node has


@pytest.fixture
def torch_threads() -> Any:
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_a_stage_that_imports_torch_runs_torch_on_the_cpus_it_may_use(
    monkeypatch: pytest.MonkeyPatch, torch_threads: None
) -> None:
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(jobs_main, "usable_cpus", lambda: LIMIT)
    torch.set_num_threads(2)
    jobs_main.fit_torch_threads()
    assert torch.get_num_threads() == LIMIT


def test_omp_num_threads_set_by_torchrun_or_the_user_is_kept(monkeypatch: pytest.MonkeyPatch,
                                                              torch_threads: None) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    monkeypatch.setattr(jobs_main, "usable_cpus", lambda: LIMIT)
    torch.set_num_threads(2)
    jobs_main.fit_torch_threads()
    assert torch.get_num_threads() == 2


def test_a_stage_without_torch_starts_no_torch_pool(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delitem(sys.modules, "torch")  # the dataset stage never imports it
    jobs_main.fit_torch_threads()  # nothing to fit, and torch is not imported for it
    assert "torch" not in sys.modules


def test_the_gguf_encoder_pool_stays_within_the_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    started: list[int] = []
    real_pool = parallel_encode.ThreadPoolExecutor

    def recording_pool(max_workers: int, **kwargs: Any) -> Any:
        started.append(max_workers)
        return real_pool(max_workers=max_workers, **kwargs)

    monkeypatch.setattr(parallel_encode, "usable_cpus", lambda: LIMIT)
    monkeypatch.setattr(parallel_encode, "ThreadPoolExecutor", recording_pool)
    assert list(parallel_encode.encoded_pieces([])) == []
    assert started == [LIMIT]


def test_llama_cpp_quantizes_on_the_cpus_it_may_use(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    llama_cpp = pytest.importorskip("llama_cpp")
    threads: list[int] = []

    def recording_quantize(_source: bytes, _destination: bytes, params: Any) -> int:
        threads.append(ctypes.cast(params, ctypes.POINTER(llama_cpp.llama_model_quantize_params)).contents.nthread)
        return 0

    monkeypatch.setattr(quantize, "usable_cpus", lambda: LIMIT)
    monkeypatch.setattr(llama_cpp, "llama_model_quantize", recording_quantize)
    quantize.quantize_with_llama_cpp(tmp_path / "in.gguf", tmp_path / "out.gguf", "q4_k_m")
    quantize.quantize_with_llama_cpp(tmp_path / "in.gguf", tmp_path / "out.gguf", "q4_k_m", n_threads=3)
    assert threads == [LIMIT, 3]


@pytest.mark.parametrize("limit, single, batch", [(1, 1, 1), (4, 2, 4)])
def test_llama_cpp_inference_splits_the_cpus_it_may_use(monkeypatch: pytest.MonkeyPatch, limit: int, single: int,
                                                        batch: int) -> None:
    llama_cpp = pytest.importorskip("llama_cpp")
    opened: list[dict[str, Any]] = []
    monkeypatch.setattr(checks, "usable_cpus", lambda: limit)
    monkeypatch.setattr(llama_cpp, "Llama", lambda **kwargs: opened.append(kwargs))
    checks.load(Path("model.gguf"))
    checks.load(Path("model.gguf"), n_threads=3)
    assert [(o["n_threads"], o["n_threads_batch"]) for o in opened] == [(single, batch), (3, 3)]
