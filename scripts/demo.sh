#!/usr/bin/env bash
# The main job on the built-in default, every step an ordinary CLI call (printed before it runs):
# a continual sequence xray -> ct -> pathology with Sparse Spectral LoRA on tiny-qwen2-vl, then
# the forgetting report. Grows with the project until it becomes `medqwen demo --quick`.
set -euo pipefail
out=${1:-out/demo}
recipe=$(pwd)/recipes/debug/tiny.yaml
bin=$(pwd)/.venv/bin
medqwen() { echo "+ medqwen $*" >&2; "$bin/medqwen" "$@"; }
if [ -e "$out/bundle.json" ]; then
  echo "$out already holds a bundle (bundles are never overwritten): remove it or pass another directory" >&2
  exit 1
fi
mkdir -p "$out"
medqwen validate "$recipe" --format table
medqwen init-experts --base tiny-qwen2-vl --recipe "$recipe" --out "$out" --format table
cd "$out"
medqwen evaluate --base-only --task xray --task ct --task pathology --format table
for task in xray ct pathology; do
  medqwen continue --task "$task" --format table
done
medqwen log --format table
medqwen forgetting-report --format table --plot forgetting.png
