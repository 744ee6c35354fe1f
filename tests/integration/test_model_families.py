"""Model families end to end through our GGUF: each family's real tokenizer and its architecture in llama.cpp.

Tokenizers: llama.cpp's own test vectors (`../shared/testdata/llama-vocab/`), tokenized by llama.cpp through a GGUF our
converter wrote for a tiny model carrying that family's real vocabulary, must match 100%.
Architectures: a tiny random model of the family with its real tokenizer, fitted to a text, converted to f16 and q8_0;
llama.cpp's next-token top-1 must agree with transformers' on ≥ 99% (f16) of the positions.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from gguf import GGUFReader

from kubetune.llama.checks import logits_agreement
from kubetune.llama.convert import convert
from tests.fixtures.llama_sdist import gemma_tokenizer_dir, gguf_metadata, sdist_vocab_gguf
from tests.fixtures.tiny_models import (
    Family,
    VocabName,
    build_tiny_model,
    gguf_test_cases,
    pytest_model_cache,
    vocab_test_cases,
    vocab_tokenizer_dir,
)

pytestmark = pytest.mark.slow
os.environ.setdefault("HF_HUB_OFFLINE", "1")

TEXT = (
    "Kubernetes schedules the fine-tuning job, the operator watches it, and the converter writes a GGUF file. "
    "Then llama.cpp loads the model and answers: 42 is the answer, 1234 apples, naïve café."
)

# vocab → (the family whose tiny model carries it, the tokenizer.ggml.pre llama.cpp must be told)
TOKENIZER_FAMILIES: dict[VocabName, tuple[Family, str]] = {
    "phi-3": ("phi3", "default"),
    "deepseek-llm": ("llama", "deepseek-llm"),
    "deepseek-coder": ("llama", "deepseek-coder"),
    "qwen35": ("qwen3", "qwen35"),
    "gpt-2": ("llama", "gpt-2"),
}

# model id → (family, vocab, GGUF architecture, tensor names that must be present)
ARCHITECTURES: dict[str, tuple[Family, VocabName, str, set[str]]] = {
    "mistral": ("mistral", "llama-spm", "llama", {"blk.0.attn_q.weight", "output.weight"}),
    "phi3": ("phi3", "phi-3", "phi3", {"blk.0.attn_qkv.weight", "blk.1.ffn_up.weight"}),
    "deepseek-llm": ("llama", "deepseek-llm", "llama", {"blk.0.ffn_gate.weight"}),
    "deepseek-coder": ("llama", "deepseek-coder", "llama", {"blk.0.ffn_gate.weight"}),
    "deepseek-r1-distill-qwen": ("qwen2", "qwen2", "qwen2", {"blk.0.attn_q.bias"}),
    # A Gated DeltaNet layer (ssm_*), then a full-attention one whose q rows carry the output gate.
    "qwen35": ("qwen35", "qwen35", "qwen35", {"blk.0.ssm_conv1d.weight", "blk.0.ssm_a", "blk.0.attn_gate.weight",
                                              "blk.1.attn_q.weight"}),
    # Gemma 2/3 folders carry a SentencePiece tokenizer.model, which takes Llama 2's path; Gemma's own vocabulary
    # (tokenizer.json only, from the llama-cpp-python sdist) is tested below.
    "gemma2": ("gemma2", "llama-spm", "gemma2", {"blk.0.post_attention_norm.weight", "blk.1.post_ffw_norm.weight"}),
    "gemma3": ("gemma3", "llama-spm", "gemma3", {"blk.0.attn_q_norm.weight", "blk.1.post_ffw_norm.weight"}),
}
TIED = {"gemma2", "gemma3"}  # Gemma ties its embeddings (llama.cpp's gemma2 requires it)


@pytest.fixture(scope="module")
def cache(request: pytest.FixtureRequest) -> Path:
    return pytest_model_cache(request)


@pytest.mark.parametrize("vocab", list(TOKENIZER_FAMILIES))
def test_llama_cpp_tokenizes_each_familys_reference_vectors_exactly_through_our_gguf(
    cache: Path, tmp_path: Path, vocab: VocabName
) -> None:
    from llama_cpp import Llama

    family, pre = TOKENIZER_FAMILIES[vocab]
    tokenizer_dir = vocab_tokenizer_dir(vocab, cache / f"vocab-{vocab}")
    model_dir = build_tiny_model(family, cache / f"tiny-{family}-{vocab}", tokenizer_dir=tokenizer_dir)
    [gguf] = convert(model_dir, tmp_path, ["f16"])
    assert GGUFReader(gguf.path).fields["tokenizer.ggml.pre"].contents() == pre
    llm = Llama(str(gguf.path), vocab_only=True, verbose=False)
    cases = vocab_test_cases(vocab)
    failures = [
        (text, expected, got)
        for text, expected in cases
        if (got := llm.tokenize(text.encode("utf-8"), add_bos=False, special=False)) != expected
    ]
    print(f"{vocab}: {len(cases) - len(failures)}/{len(cases)} test vectors match")
    assert not failures, failures[:3]


def fitted_model(cache: Path, model_id: str) -> Path:
    family, vocab, _, _ = ARCHITECTURES[model_id]
    tokenizer_dir = vocab_tokenizer_dir(vocab, cache / f"vocab-{vocab}")
    return build_tiny_model(
        family, cache / f"fit-{model_id}", tokenizer_dir=tokenizer_dir, fit_text=TEXT, tie_embeddings=model_id in TIED
    )


@pytest.mark.parametrize("model_id", list(ARCHITECTURES))
def test_each_familys_f16_and_q8_0_gguf_predicts_like_transformers(
    cache: Path, tmp_path: Path, model_id: str
) -> None:
    _, _, arch, present = ARCHITECTURES[model_id]
    model_dir = fitted_model(cache, model_id)
    f16, q8 = convert(model_dir, tmp_path, ["f16", "q8_0"])
    reader = GGUFReader(f16.path)
    assert reader.fields["general.architecture"].contents() == arch
    names = {tensor.name for tensor in reader.tensors}
    assert present <= names and (model_id not in TIED or "output.weight" not in names)
    f16_agreement = logits_agreement(f16.path, model_dir, TEXT)
    q8_agreement = logits_agreement(q8.path, model_dir, TEXT)
    print(f"{model_id}: f16 {f16_agreement}, q8_0 {q8_agreement}")
    assert f16_agreement.top1_agreement >= 0.99, f16_agreement
    assert q8_agreement.top1_agreement >= 0.95 and q8_agreement.mean_kl <= 0.01, q8_agreement


@pytest.mark.parametrize("model_id", ["mistral", "phi3", "deepseek-r1-distill-qwen", "gemma2", "gemma3", "qwen35"])
def test_each_family_trains_an_all_linear_lora_that_merges_like_peft_and_converts_faithfully(
    cache: Path, tmp_path: Path, model_id: str
) -> None:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from kubetune.jobs.lora_merge import merge_adapter
    from tests.fixtures.lora_adapters import peft_merged_model
    from tests.unit.test_merge_lora import assert_matches_peft

    base_dir = fitted_model(cache, model_id)
    model = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=torch.float32)
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    ids = AutoTokenizer.from_pretrained(str(base_dir))(TEXT, return_tensors="pt")["input_ids"]
    optimizer = torch.optim.Adam([p for p in peft_model.parameters() if p.requires_grad], lr=1e-3)
    for _ in range(2):  # two training steps: every lora_B leaves zero
        peft_model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    adapter_dir = tmp_path / "adapter"
    peft_model.save_pretrained(str(adapter_dir))

    result = merge_adapter(base_dir, adapter_dir, tmp_path / "merged")

    # phi3: qkv_proj, o_proj, gate_up_proj, down_proj; qwen35's linear-attention layer: in_proj_qkv/z/b/a, out_proj
    linear_per_layer = {"phi3": (4, 4), "qwen35": (8, 7)}.get(model_id, (7, 7))
    assert result.lora_modules == sum(linear_per_layer) and result.tied_embeddings == (model_id in TIED)
    assert_matches_peft(tmp_path / "merged", peft_merged_model(base_dir, adapter_dir))
    [f16] = convert(tmp_path / "merged", tmp_path / "gguf", ["f16"])
    agreement = logits_agreement(f16.path, tmp_path / "merged", TEXT)
    print(f"{model_id} after training and merge: f16 {agreement}")
    assert agreement.top1_agreement >= 0.99, agreement


# Gemma's vocabulary: llama.cpp's Gemma 4 vocab (262k tokens, byte-fallback BPE with ▁ for spaces) from the pinned
# llama-cpp-python sdist. Our converter has no Gemma 4 architecture, so it rides on tiny Gemma 2/3 models, whose
# tokenizer.json has the same shape; llama.cpp tokenizes it the same whatever the architecture.
GEMMA4_VOCAB = "gemma-4"


@pytest.fixture(scope="module")
def gemma4_vocab(cache: Path) -> tuple[Path, Path]:
    """(llama.cpp's vocab GGUF, the Hugging Face tokenizer folder rebuilt from it)."""
    gguf = sdist_vocab_gguf(GEMMA4_VOCAB, cache)
    return gguf, gemma_tokenizer_dir(gguf, cache / f"vocab-{GEMMA4_VOCAB}")


def test_gemmas_own_vocabulary_converts_to_llama_cpps_gemma4_tokenizer_and_tokenizes_its_vectors_exactly(
    cache: Path, tmp_path: Path, gemma4_vocab: tuple[Path, Path]
) -> None:
    from llama_cpp import Llama

    reference_gguf, tokenizer_dir = gemma4_vocab
    model_dir = build_tiny_model("gemma3", cache / f"tiny-gemma3-{GEMMA4_VOCAB}", tokenizer_dir=tokenizer_dir,
                                 tie_embeddings=True)
    [gguf] = convert(model_dir, tmp_path, ["f16"])
    ours, reference = gguf_metadata(gguf.path), gguf_metadata(reference_gguf)
    assert ours["tokenizer.ggml.model"] == "gemma4"
    for key in ("tokens", "token_type", "merges", "bos_token_id", "eos_token_id", "add_bos_token"):
        assert ours[f"tokenizer.ggml.{key}"] == reference[f"tokenizer.ggml.{key}"], key
    llm = Llama(str(gguf.path), vocab_only=True, verbose=False)
    cases = gguf_test_cases(reference_gguf)
    failures = [
        (text, expected, got)
        for text, expected in cases
        if (got := llm.tokenize(text.encode("utf-8"), add_bos=False, special=False)) != expected
    ]
    print(f"{GEMMA4_VOCAB}: {len(cases) - len(failures)}/{len(cases)} test vectors match")
    assert not failures, failures[:3]


def test_gemma_with_its_own_vocabulary_predicts_like_transformers_in_f16_and_q8_0(
    cache: Path, tmp_path: Path, gemma4_vocab: tuple[Path, Path]
) -> None:
    # Gemma 3 only: Gemma 2 takes the same tokenizer path, and fitting a 262k-token embedding costs ~30 s a model.
    family: Family = "gemma3"
    model_dir = build_tiny_model(family, cache / f"fit-{family}-{GEMMA4_VOCAB}", tokenizer_dir=gemma4_vocab[1],
                                 fit_text=TEXT, tie_embeddings=True)
    f16, q8 = convert(model_dir, tmp_path, ["f16", "q8_0"])
    f16_agreement = logits_agreement(f16.path, model_dir, TEXT)
    q8_agreement = logits_agreement(q8.path, model_dir, TEXT)
    print(f"{family} with the {GEMMA4_VOCAB} vocabulary: f16 {f16_agreement}, q8_0 {q8_agreement}")
    assert f16_agreement.top1_agreement >= 0.99, f16_agreement
    assert q8_agreement.top1_agreement >= 0.95 and q8_agreement.mean_kl <= 0.01, q8_agreement
