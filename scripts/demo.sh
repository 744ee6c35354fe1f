#!/usr/bin/env bash
# Sets up .venv (pinned) on a fresh machine and runs the main job: the bundled SmolLM2-135M-Instruct learns a new
# identity from datasets_new/, is merged, converted to GGUF and gated in llama.cpp — all on this machine's CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
exec .venv/bin/kubetune run examples/local-identity.yaml "$@"
