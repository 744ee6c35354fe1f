"""Wall time and peak RSS of our HF → GGUF converter (f16 and q8_0) on SmolLM2-135M and a random ~1B Llama.

    .venv/bin/python benchmarks/convert_gguf.py [--work-dir DIR] [--skip-1b]
    .venv/bin/python benchmarks/convert_gguf.py --against-llama-cpp [--repetitions N] [--json]

Each conversion runs in its own child process, which reports its peak RSS (VmHWM). Figures are printed against two
baselines measured in the same run: the time to read the model's safetensors bytes once (the I/O floor), and the
memory goal `1.2 × largest tensor + 300 MB` (largest tensor in its stored bytes), as ratios.

--against-llama-cpp compares `python -m kubetune.llama convert` with llama.cpp's own `convert_hf_to_gguf.py` on the
random 1.24B Llama (bf16, several shards): see llama_cpp_row.py.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

MB = 1024 * 1024
# Llama 3.2 1B's shape (tied embeddings, 128k vocabulary): 1.24B parameters.
LLAMA_1B = {
    "hidden_size": 2048,
    "intermediate_size": 8192,
    "num_hidden_layers": 16,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "vocab_size": 128256,
}
SHARD_BYTES = 600 * MB


@dataclass(frozen=True)
class Measurement:
    model: str
    outtype: str
    wall_s: float
    peak_rss_mb: float
    largest_tensor_mb: float
    read_floor_s: float

    @property
    def goal_mb(self) -> float:
        return 1.2 * self.largest_tensor_mb + 300


def build_random_llama_1b(out_dir: Path, tokenizer_dir: Path) -> Path:
    """A random bf16 Llama-3.2-1B-shaped model in several safetensors shards, written one shard at a time."""
    import torch
    from safetensors.torch import save_file

    if (out_dir / "model.safetensors.index.json").is_file():
        return out_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    h, f, kv = LLAMA_1B["hidden_size"], LLAMA_1B["intermediate_size"], LLAMA_1B["num_key_value_heads"]
    head_dim = h // LLAMA_1B["num_attention_heads"]
    shapes: list[tuple[str, tuple[int, ...]]] = [("model.embed_tokens.weight", (LLAMA_1B["vocab_size"], h))]
    for layer in range(LLAMA_1B["num_hidden_layers"]):
        prefix = f"model.layers.{layer}."
        shapes += [
            (prefix + "input_layernorm.weight", (h,)),
            (prefix + "self_attn.q_proj.weight", (h, h)),
            (prefix + "self_attn.k_proj.weight", (kv * head_dim, h)),
            (prefix + "self_attn.v_proj.weight", (kv * head_dim, h)),
            (prefix + "self_attn.o_proj.weight", (h, h)),
            (prefix + "post_attention_layernorm.weight", (h,)),
            (prefix + "mlp.gate_proj.weight", (f, h)),
            (prefix + "mlp.up_proj.weight", (f, h)),
            (prefix + "mlp.down_proj.weight", (h, f)),
        ]
    shapes.append(("model.norm.weight", (h,)))
    generator = torch.Generator().manual_seed(0)
    weight_map: dict[str, str] = {}
    shard: dict[str, torch.Tensor] = {}
    shard_bytes, shard_index = 0, 0

    def flush() -> None:
        nonlocal shard, shard_bytes, shard_index
        shard_index += 1
        name = f"model-{shard_index:05d}.safetensors"
        save_file(shard, str(out_dir / name), metadata={"format": "pt"})
        weight_map.update({key: name for key in shard})
        shard, shard_bytes = {}, 0

    for name, shape in shapes:
        if len(shape) == 1:
            tensor = torch.ones(shape, dtype=torch.bfloat16)
        else:
            tensor = (torch.randn(shape, generator=generator) * 0.02).to(torch.bfloat16)
        shard[name] = tensor
        shard_bytes += tensor.numel() * 2
        if shard_bytes >= SHARD_BYTES:
            flush()
    if shard:
        flush()
    (out_dir / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "rms_norm_eps": 1e-5,
        "max_position_embeddings": 131072,
        "tie_word_embeddings": True,
        "torch_dtype": "bfloat16",
        "rope_theta": 500000.0,
        "bos_token_id": 128000,
        "eos_token_id": 128001,
        "rope_scaling": {
            "rope_type": "llama3",
            "factor": 32.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
        },
        **LLAMA_1B,
    }
    (out_dir / "config.json").write_text(json.dumps(config, indent=1))
    for file in tokenizer_dir.iterdir():
        if file.name.startswith("tokenizer") or file.name.endswith(".jinja"):
            shutil.copyfile(file, out_dir / file.name)
    return out_dir


def largest_tensor_mb(model_dir: Path) -> float:
    from kubetune.llama.safetensors_io import index_tensors

    return max(tensor.nbytes for tensor in index_tensors(model_dir).values()) / MB


def read_floor_s(model_dir: Path) -> float:
    """Seconds to read every weight byte once (page cache as it is)."""
    start = time.perf_counter()
    buffer = bytearray(64 * MB)
    for file in sorted(model_dir.glob("*.safetensors")):
        with open(file, "rb", buffering=0) as handle:
            while handle.readinto(buffer):
                pass
    return time.perf_counter() - start


def measure(model_dir: Path, out_dir: Path, outtype: str) -> tuple[float, float]:
    """(wall seconds, peak RSS MB) of one conversion in a child process.

    The child reports its own VmHWM: rusage's ru_maxrss would not do, because Linux carries the parent's high-water
    mark across fork + exec, and this parent holds torch and a freshly built model.
    """
    code = (
        "import sys; from pathlib import Path; from kubetune.llama.convert import convert; "
        "convert(Path(sys.argv[1]), Path(sys.argv[2]), [sys.argv[3]]); "
        "print([l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM:')][0])"
    )
    start = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-c", code, str(model_dir), str(out_dir), outtype], capture_output=True, text=True, check=False
    )
    wall = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"conversion of {model_dir.name} to {outtype} failed:\n{result.stderr[-2000:]}")
    return wall, int(result.stdout.split()[-1]) / 1024  # VmHWM is in kB


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work-dir", type=Path, default=REPO / ".cache" / "benchmarks")
    parser.add_argument("--skip-1b", action="store_true", help="only SmolLM2")
    parser.add_argument("--against-llama-cpp", action="store_true",
                        help="ours vs llama.cpp's convert_hf_to_gguf.py on the random 1B Llama (see llama_cpp_row.py)")
    parser.add_argument("--repetitions", type=int, default=2, help="measured runs per converter and type (≥ 2)")
    parser.add_argument("--json", action="store_true", help="with --against-llama-cpp: print the rows as JSON")
    args = parser.parse_args()
    if args.against_llama_cpp:
        from llama_cpp_row import compare_with_llama_cpp  # beside this script, on sys.path when it runs

        compare_with_llama_cpp(args.work_dir, max(2, args.repetitions), as_json=args.json)
        return
    from tests.fixtures.tiny_models import smollm2_hf_dir, vocab_tokenizer_dir

    models = {"SmolLM2-135M (bf16, 1 shard)": smollm2_hf_dir(args.work_dir)}
    if not args.skip_1b:
        tokenizer = vocab_tokenizer_dir("llama-bpe", args.work_dir / "vocab-llama-bpe")
        models["random Llama-3.2-1B shape (bf16, shards)"] = build_random_llama_1b(
            args.work_dir / "llama-1b", tokenizer
        )
    results: list[Measurement] = []
    for label, model_dir in models.items():
        floor = read_floor_s(model_dir)
        largest = largest_tensor_mb(model_dir)
        for outtype in ("f16", "q8_0"):
            out_dir = args.work_dir / "out"
            wall, rss = measure(model_dir, out_dir, outtype)
            shutil.rmtree(out_dir)
            results.append(Measurement(label, outtype, wall, rss, largest, floor))
            print(f"measured {label} {outtype}: {wall:.1f} s, {rss:.0f} MB", flush=True)
    print()
    print(
        f"{'model':<42} {'type':<5} {'wall s':>7} {'× read':>7} {'peak RSS MB':>12} {'largest MB':>11} "
        f"{'goal MB':>8} {'RSS/goal':>9}"
    )
    for m in results:
        print(
            f"{m.model:<42} {m.outtype:<5} {m.wall_s:>7.1f} {m.wall_s / m.read_floor_s:>7.1f} "
            f"{m.peak_rss_mb:>12.0f} {m.largest_tensor_mb:>11.0f} {m.goal_mb:>8.0f} "
            f"{m.peak_rss_mb / m.goal_mb:>9.2f}"
        )


if __name__ == "__main__":
    main()
