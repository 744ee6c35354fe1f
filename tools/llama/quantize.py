"""K-quants through llama.cpp's own quantizer (llama-cpp-python's `llama_model_quantize`)."""

from __future__ import annotations

import contextlib
import ctypes
import io
from pathlib import Path

from kubetune.cpus import usable_cpus

from .errors import ConversionError

# Output type → llama.cpp ftype constant name in llama_cpp.
LLAMA_CPP_FTYPES: dict[str, str] = {
    "q2_k": "LLAMA_FTYPE_MOSTLY_Q2_K",
    "q3_k_s": "LLAMA_FTYPE_MOSTLY_Q3_K_S",
    "q3_k_m": "LLAMA_FTYPE_MOSTLY_Q3_K_M",
    "q3_k_l": "LLAMA_FTYPE_MOSTLY_Q3_K_L",
    "q4_0": "LLAMA_FTYPE_MOSTLY_Q4_0",
    "q4_1": "LLAMA_FTYPE_MOSTLY_Q4_1",
    "q4_k_s": "LLAMA_FTYPE_MOSTLY_Q4_K_S",
    "q4_k_m": "LLAMA_FTYPE_MOSTLY_Q4_K_M",
    "q5_0": "LLAMA_FTYPE_MOSTLY_Q5_0",
    "q5_1": "LLAMA_FTYPE_MOSTLY_Q5_1",
    "q5_k_s": "LLAMA_FTYPE_MOSTLY_Q5_K_S",
    "q5_k_m": "LLAMA_FTYPE_MOSTLY_Q5_K_M",
    "q6_k": "LLAMA_FTYPE_MOSTLY_Q6_K",
}


def quantize_with_llama_cpp(source_f16: Path, destination: Path, outtype: str, n_threads: int | None = None) -> None:
    """Quantize an f16 GGUF with llama.cpp on `n_threads` (default: the CPUs this process may use; llama.cpp's own
    default is every core of the node, whatever a pod's CPU limit); its log is kept and shown only when quantization
    fails."""
    try:
        import llama_cpp
    except ImportError as exc:
        raise ConversionError(f"{outtype} needs llama-cpp-python (pip install llama-cpp-python)") from exc
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, LLAMA_CPP_FTYPES[outtype])
    params.nthread = n_threads if n_threads is not None else usable_cpus()
    log = io.StringIO()
    # llama-cpp-python routes llama.cpp's log through a Python callback that prints to sys.stderr.
    with contextlib.redirect_stderr(log):
        status = llama_cpp.llama_model_quantize(
            str(source_f16).encode(), str(destination).encode(), ctypes.byref(params)
        )
    if status != 0:
        tail = "\n".join(log.getvalue().strip().splitlines()[-5:])
        raise ConversionError(f"llama.cpp failed to quantize to {outtype} (status {status}): {tail}")
