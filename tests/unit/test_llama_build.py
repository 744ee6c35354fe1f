"""The installed llama.cpp runs on any x86-64-v3 / armv8 CPU, not only on the machine that compiled it.

A `-march=native` build on a CPU with AMX or AVX-512 makes a library that crashes (SIGILL, or SIGSEGV in
`ggml_backend_amx_mul_mat`) where the CPU or its kernel lacks them. scripts/bootstrap.sh builds with GGML_NATIVE=OFF
and records the flags it used beside the venv.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

VENV = Path(sys.prefix)
# Instructions of a CPU beyond the portable baseline: AVX-512 registers, AMX tiles and tile config.
BEYOND_BASELINE = re.compile(r"%zmm\d|%tmm\d|\bldtilecfg\b|\btileloadd")


def _llama_lib_dir() -> Path:
    import llama_cpp

    return Path(llama_cpp.__file__).parent / "lib"


def _disassembly_hits(library: Path) -> list[str]:
    objdump = subprocess.run(["objdump", "-d", "--no-show-raw-insn", str(library)], capture_output=True, text=True,
                             check=True)
    return [line.strip() for line in objdump.stdout.splitlines() if BEYOND_BASELINE.search(line)]


def test_bootstrap_built_llama_cpp_without_native_cpu_flags() -> None:
    recorded = VENV / ".kubetune-llama-cmake-args"
    assert recorded.is_file(), f"{recorded} is missing: set up the venv with scripts/bootstrap.sh"
    flags = recorded.read_text().split()
    assert "-DGGML_NATIVE=OFF" in flags
    assert not [flag for flag in flags if re.fullmatch(r"-DGGML_(NATIVE|AVX512\w*|AMX\w*)=(ON|on|1)", flag)]


def test_llama_cpp_reports_no_cpu_feature_beyond_the_portable_baseline() -> None:
    import llama_cpp

    features = llama_cpp.llama_print_system_info().decode()
    enabled = set(re.findall(r"(\w+) = 1", features))
    assert not {name for name in enabled if name.startswith(("AVX512", "AMX", "AVX_VNNI"))}, features


@pytest.mark.skipif(shutil.which("objdump") is None or shutil.which("cc") is None, reason="needs binutils and a C compiler")
def test_no_llama_cpp_library_contains_avx512_or_amx_instructions(tmp_path: Path) -> None:
    # The scan must be able to fail: a function compiled for AVX-512 shows zmm registers to it.
    probe = tmp_path / "probe.c"
    probe.write_text("void scale(float *x, int n) { for (int i = 0; i < n; i++) x[i] *= 3.0f; }\n")
    subprocess.run(["cc", "-O3", "-mavx512f", "-mprefer-vector-width=512", "-shared", "-fPIC", str(probe), "-o",
                    str(tmp_path / "probe.so")], check=True)
    assert _disassembly_hits(tmp_path / "probe.so")

    libraries = sorted(p for p in _llama_lib_dir().glob("lib*.so*") if p.is_file() and not p.is_symlink())
    assert libraries
    for library in libraries:
        hits = _disassembly_hits(library)
        assert not hits, f"{library.name} has {len(hits)} instructions beyond the baseline, e.g. {hits[:3]}"
