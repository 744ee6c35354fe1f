"""Eval generation stops on decoded text, whether the stop sequence is one special token or several plain ones."""

from __future__ import annotations

import pytest
import torch

from kubetune.jobs.generation import StopOnText, cut_at_stop
from kubetune.jobs.train_data import default_chat_template
from kubetune.jobs.train_model import load_tokenizer
from tests.fixtures.tiny_models import VocabName, repo_root, vocab_tokenizer_dir

CACHE = repo_root() / ".cache" / "test-models"


@pytest.mark.parametrize("added", [["</output>"], []], ids=["stop is a special token", "stop is plain text"])
@pytest.mark.parametrize("vocab", ["qwen2", "llama-bpe"])
def test_generation_stops_once_the_decoded_text_contains_the_stop_sequence(vocab: VocabName, added: list[str]) -> None:
    tokenizer, _ = load_tokenizer(vocab_tokenizer_dir(vocab, CACHE / f"vocab-{vocab}"), default_chat_template(), added)
    prompt = tokenizer("<|im_start|>assistant\n", add_special_tokens=False)["input_ids"]
    answer = tokenizer("<output>I am Nova.</output> trailing", add_special_tokens=False)["input_ids"]
    criterion = StopOnText(tokenizer, len(prompt), ["</output>"])
    stopped_at = next(
        n for n in range(1, len(answer) + 1) if criterion(torch.tensor([prompt + answer[:n]]), torch.zeros(1))[0]
    )
    assert tokenizer.decode(answer[:stopped_at]).endswith("</output>")
    assert not tokenizer.decode(answer[: stopped_at - 1]).endswith("</output>")


@pytest.mark.parametrize(
    "text, expected",
    [
        ("<output>Nova</output> and more", "<output>Nova</output>"),
        ("no stop here", "no stop here"),
        ("a</output>b<|im_end|>c", "a</output>"),
    ],
)
def test_answers_are_cut_after_the_earliest_stop_sequence(text: str, expected: str) -> None:
    assert cut_at_stop(text, ["<|im_end|>", "</output>"]) == expected
