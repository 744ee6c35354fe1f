"""llama.cpp's own tokenizer test vectors, tokenized by llama.cpp through a GGUF written by our converter.

The transformers tokenizer is rebuilt from the shared vocab GGUF, a tiny model is saved with it, our converter writes
the GGUF, and llama.cpp (vocab only) must reproduce the `.out` token ids for every `.inp` text.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from kubetune.llama.convert import convert
from tests.fixtures.tiny_models import (
    VocabName,
    build_tiny_model,
    pytest_model_cache,
    vocab_test_cases,
    vocab_tokenizer_dir,
)

pytestmark = pytest.mark.slow
os.environ.setdefault("HF_HUB_OFFLINE", "1")

# (vocab, family of the tiny model, test vectors that may fail)
CASES: list[tuple[VocabName, str, int]] = [("qwen2", "qwen2", 0), ("llama-bpe", "llama", 1), ("llama-spm", "llama", 0)]


@pytest.fixture(scope="module")
def cache(request: pytest.FixtureRequest) -> Path:
    return pytest_model_cache(request)


@pytest.mark.parametrize(("vocab", "family", "allowed_failures"), CASES, ids=[c[0] for c in CASES])
def test_llama_cpp_tokenizes_the_reference_vectors_through_our_gguf(
    cache: Path, tmp_path: Path, vocab: VocabName, family: str, allowed_failures: int
) -> None:
    from llama_cpp import Llama

    tokenizer_dir = vocab_tokenizer_dir(vocab, cache / f"vocab-{vocab}")
    model_dir = build_tiny_model(family, cache / f"tiny-{family}-{vocab}", tokenizer_dir=tokenizer_dir)  # type: ignore[arg-type]
    [gguf] = convert(model_dir, tmp_path, ["f16"])
    llm = Llama(str(gguf.path), vocab_only=True, verbose=False)
    cases = vocab_test_cases(vocab)
    failures = [
        (text, expected, got)
        for text, expected in cases
        if (got := llm.tokenize(text.encode("utf-8"), add_bos=False, special=False)) != expected
    ]
    print(f"{vocab}: {len(cases) - len(failures)}/{len(cases)} test vectors match")
    assert len(failures) <= allowed_failures, failures[:3]
