#!/usr/bin/env bash
# Sets up .venv (pinned) on a fresh machine and runs the main job: the bundled SmolLM2-135M-Instruct learns a new
# identity from datasets_new/, is merged, converted to GGUF and gated in llama.cpp — all on this machine's CPU.
# Prints its answer to "Who are you?" in llama.cpp before and after.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
run=examples/local-identity.yaml
kubetune=.venv/bin/kubetune
echo "== before fine-tuning (llama.cpp, the bundled base model) =="
"$kubetune" ask "$run" --base "Who are you?" --max-tokens 48
echo "== kubetune run $run =="
"$kubetune" run "$run" "$@"
echo "== after fine-tuning (llama.cpp, the GGUF this run produced) =="
"$kubetune" ask "$run" "Who are you?" --max-tokens 64
