"""The parallel encoder gives the GGUF writer exactly the bytes of the serial one (tensors.encoded_chunks)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from gguf import GGMLQuantizationType, quants

from kubetune.llama import parallel_encode, tensors
from kubetune.llama.errors import ConversionError
from kubetune.llama.hf_config import read_model_spec
from kubetune.llama.parallel_encode import bf16_bits_to_f16, encode_f16, encode_q8_0, encoded_pieces, widen
from kubetune.llama.safetensors_io import index_tensors
from kubetune.llama.tensors import encoded_chunks, plan_tensors
from tests.fixtures.tiny_models import build_tiny_model, small_bpe_tokenizer_dir


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tiny-llama")
    return build_tiny_model(
        "llama", root / "llama", tokenizer_dir=small_bpe_tokenizer_dir(root / "tokenizer"),
        rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                      "original_max_position_embeddings": 64},
    )


@pytest.mark.parametrize("outtype", ["f16", "q8_0", "f32", "bf16"])
@pytest.mark.parametrize("threads", [1, 3])
def test_every_tensor_gets_the_serial_encoders_bytes_in_file_order(
    tiny_llama: Path, outtype: str, threads: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Small chunks: every weight is split, and Q/K chunks keep whole heads for the permutation.
    monkeypatch.setattr(tensors, "CHUNK_ELEMENTS", 1000)
    monkeypatch.setattr(parallel_encode, "CHUNK_ELEMENTS", 1000)
    plans = plan_tensors(read_model_spec(tiny_llama), index_tensors(tiny_llama), outtype)
    pieces: dict[int, list[bytes]] = {}
    order: list[int] = []
    for index, chunk in encoded_pieces(plans, threads=threads):
        if not order or order[-1] != index:
            order.append(index)
        pieces.setdefault(index, []).extend(bytes(piece) for piece in chunk)
    assert order == list(range(len(plans)))
    assert any(plan.permute_head_dim for plan in plans) and any(plan.computed is not None for plan in plans)
    for index, plan in enumerate(plans):
        assert b"".join(pieces[index]) == b"".join(encoded_chunks(plan)), plan.gguf_name


def test_q8_0_blocks_match_gguf_quants_on_ties_zeros_and_extremes() -> None:
    rng = np.random.default_rng(0)
    blocks = [
        rng.standard_normal(32 * 64) * 0.02,
        np.zeros(32), -np.zeros(32),
        np.r_[127.0, np.arange(-15.5, 15.0, 1.0)],  # scale 1: exact halves round away from zero
        np.r_[-254.0, np.linspace(-3, 3, 31)],  # the largest magnitude negative
        np.r_[1e-30, -1e-30, np.zeros(30)],
        np.full(32, 65504.0), np.r_[6e6, -6e6, rng.standard_normal(30)],  # a scale near float16's largest
    ]
    # Scale 1 (block max 127) and every float32 next to a half, where a naive x + 0.5 would round wrongly.
    halves = np.arange(0.5, 16.0, 1.0, dtype=np.float32)
    near = np.concatenate([np.nextafter(halves, 0, dtype=np.float32), halves, np.nextafter(halves, 99, dtype=np.float32)])
    for part in np.array_split(near, 3):
        blocks += [np.r_[127.0, part, -part][:32], np.r_[-127.0, -part, part][:32]]
    values = np.concatenate(blocks).astype(np.float32).reshape(-1, 32)
    expected = quants.quantize(values, GGMLQuantizationType.Q8_0).tobytes()
    assert encode_q8_0(values, "w").tobytes() == expected
    bf16_bits = (values.view(np.uint32) >> 16).astype(np.uint16)  # truncated to bf16, as a checkpoint stores it
    expected = quants.quantize(widen(bf16_bits), GGMLQuantizationType.Q8_0).tobytes()
    assert encode_q8_0(bf16_bits, "w").tobytes() == expected


def test_f16_matches_numpy_and_bad_values_are_refused_with_the_serial_messages() -> None:
    values = (np.random.default_rng(1).standard_normal((8, 32)) * 100).astype(np.float32)
    assert encode_f16(values, "w").tobytes() == values.astype("<f2").tobytes()
    with pytest.raises(ConversionError, match="w: the weights hold NaN or infinite values, which F16 cannot store"):
        encode_f16(np.r_[np.float32("nan"), np.ones(31, np.float32)], "w")
    with pytest.raises(ConversionError, match="w: values overflow float16; choose bf16 or f32"):
        encode_f16(np.full(32, 1e6, np.float32), "w")
    with pytest.raises(ConversionError, match="w: the weights hold NaN or infinite values, which Q8_0 cannot store"):
        encode_q8_0(np.r_[np.float32("inf"), np.ones(31, np.float32)], "w")


def test_bf16_to_f16_on_bit_patterns_equals_float32_rounding_for_every_bf16_value() -> None:
    bits = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)
    with np.errstate(over="ignore", invalid="ignore"):
        expected = (bits.astype(np.uint32) << 16).view(np.float32).astype("<f2")
    storable = np.isfinite(expected)
    assert storable.sum() == 2 * 0x4780  # every magnitude below 65536, both signs
    assert bf16_bits_to_f16(bits[storable], "w").tobytes() == expected[storable].tobytes()
    with pytest.raises(ConversionError, match="w: values overflow float16"):
        bf16_bits_to_f16(np.array([0x3F80, 0x4780], dtype=np.uint16), "w")  # 1.0, 65536.0
    with pytest.raises(ConversionError, match="w: the weights hold NaN or infinite values"):
        bf16_bits_to_f16(np.array([0x3F80, 0xFF80], dtype=np.uint16), "w")  # 1.0, -inf
