#!/usr/bin/env bash
# Sets up .venv (pinned) on a fresh machine and runs the whole test suite. `.ci/run` calls exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
# The mlflow server of the tracking tests (tests/fixtures/mlflow_server.py) has its own venv: mlflow pins pyarrow below
# the jobs extra's pin. Re-made only when its pins change.
mlflow_want=$(sha256sum requirements/mlflow-server.txt | cut -c1-64)
if [ "$(cat .venv-mlflow/.kubetune-install 2>/dev/null)" != "$mlflow_want" ]; then
  echo "kubetune: setting up .venv-mlflow" >&2
  "${PYTHON:-python3}" -P -m venv --clear .venv-mlflow
  .venv-mlflow/bin/python -P -m pip install --disable-pip-version-check -q -r requirements/mlflow-server.txt
  echo "$mlflow_want" > .venv-mlflow/.kubetune-install
fi
# Debian packages the tests use: Lua for the Argo CD health check, Chromium and its driver for the web view's
# browser tests (Selenium), the OCI registry and htpasswd of the publish tests.
missing=()
command -v lua5.4 >/dev/null || missing+=(lua5.4)
command -v chromium >/dev/null || missing+=(chromium)
command -v chromedriver >/dev/null || missing+=(chromium-driver)
command -v docker-registry >/dev/null || missing+=(docker-registry)
command -v htpasswd >/dev/null || missing+=(apache2-utils)
if [ ${#missing[@]} -gt 0 ]; then
  (apt-get update -qq && apt-get install -y -qq "${missing[@]}" >/dev/null) \
    || echo "warning: could not install ${missing[*]}" >&2
fi
# The real kubectl of tests/integration/test_kubectl_*.py: the package `kubectl` comes from Google Cloud SDK's apt
# repository where a machine has it (Debian's own kubernetes-client is 1.20, too old), so it is tried on its own.
if ! command -v kubectl >/dev/null; then
  (apt-get update -qq && apt-get install -y -qq kubectl >/dev/null 2>&1) \
    || echo "warning: could not install kubectl (its tests skip)" >&2
fi
# Models, checkpoints and GGUFs of the tests go under the temp dir (a few GB at a time, removed as tests pass): say how
# much room there is, so that a full disk reads as what it is.
df -h "${TMPDIR:-/tmp}" | awk 'NR == 2 {print "test temp dir: " $4 " free of " $2}'
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
# -P keeps the repository root off sys.path at start-up (its operator/ folder would shadow the standard library);
# pytest adds it once the interpreter is up (pythonpath in pyproject.toml) so tests can import tests.fixtures.
# hypothesis keeps its scratch (constants, unicode data) out of the checkout.
export HYPOTHESIS_STORAGE_DIRECTORY="${HYPOTHESIS_STORAGE_DIRECTORY:-${TMPDIR:-/tmp}/kubetune-hypothesis}"
exec .venv/bin/python -P -m pytest "$@"
