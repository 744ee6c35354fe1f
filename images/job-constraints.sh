#!/bin/sh
# Writes the job image's constraints: requirements/constraints.txt with torch's CPU pin replaced by the CUDA build of
# the same version (e.g. torch==2.13.0 -> torch==2.13.0+cu128), so that no later install can swap the CUDA build for
# another one. Every other pin passes through unchanged.
#   usage: job-constraints.sh CONSTRAINTS TORCH_VERSION TORCH_CUDA > OUT
set -eu
if [ "$#" -ne 3 ]; then
  echo "usage: $0 CONSTRAINTS TORCH_VERSION TORCH_CUDA" >&2
  exit 2
fi
constraints=$1 torch_version=$2 torch_cuda=$3
pinned=$(sed -n 's/^torch==\([^ #]*\).*/\1/p' "$constraints")
if [ "$pinned" != "$torch_version" ]; then
  echo "$constraints pins torch==${pinned:-<none>}, the image asks for TORCH_VERSION=$torch_version" >&2
  exit 1
fi
sed "s/^torch==.*/torch==${torch_version}+${torch_cuda}/" "$constraints"
