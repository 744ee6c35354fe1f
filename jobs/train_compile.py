"""Compiled decoder layers for training on GPUs.

A QLoRA decoder layer runs a handful of matmuls and one attention call, and around them dozens of small
element-wise kernels: RMSNorm in fp32 and back, rotary embeddings, SwiGLU, each LoRA adapter's dropout, scaling and
add, the residual adds. Each reads and writes whole activations, in forward, in the checkpointed recompute and in
backward, and together they cost about as much GPU time as the matmuls. torch.compile (inductor) fuses each run of
them into a few kernels and keeps fewer intermediates for backward; the 4-bit matmuls (bitsandbytes) and the varlen
attention are custom ops it calls as they are.

Every layer of a model has the same code and, with `dynamic=True`, shape-generic kernels: one compilation serves all
layers and every packed batch width, so there is no recompiling mid-run.
"""

from __future__ import annotations

from typing import Any

import torch
from peft import PeftModel

# Families whose decoder layers compile as one graph each: llama and qwen2 checked on an H100 (one graph, no breaks,
# no recompiles), and every one against eager training in tests/unit/test_train_compile.py.
COMPILED_MODEL_TYPES = frozenset({"llama", "mistral", "qwen2", "qwen3"})


def decoder_layers(model: PeftModel) -> torch.nn.ModuleList | None:
    base: Any = model.get_base_model()
    if getattr(base.config, "model_type", None) not in COMPILED_MODEL_TYPES:
        return None
    layers = getattr(base.get_decoder(), "layers", None)
    return layers if isinstance(layers, torch.nn.ModuleList) else None


def compile_decoder_layers(model: PeftModel) -> bool:
    """Compile each decoder layer's forward in place (compilation happens on the first step); False where the
    model's family is not one we compile."""
    layers = decoder_layers(model)
    if layers is None:
        return False
    for layer in layers:
        layer.compile(dynamic=True)
    return True
