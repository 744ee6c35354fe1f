#!/usr/bin/env bash
# Re-resolves every dependency from pyproject.toml in a throw-away venv and writes requirements/constraints.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 -m venv "$tmp/venv"
"$tmp/venv/bin/pip" install -q "pip==25.3"
"$tmp/venv/bin/pip" install -q torch==2.13.0   # the CPU build from the local index
"$tmp/venv/bin/pip" install -q '.[operator,jobs,test]'
{
  head -n 2 requirements/constraints.txt
  "$tmp/venv/bin/pip" freeze --all --exclude-editable | grep -v -i -E '^(kubetune|pip)[= @]' | sed 's/+cpu$//' | sort -f
} > requirements/constraints.txt.new
mv requirements/constraints.txt.new requirements/constraints.txt
