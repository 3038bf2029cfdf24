#!/usr/bin/env bash
# The main job on the built-in default, every step an ordinary CLI call (printed before it runs).
# Grows with the project until it becomes `medqwen demo --quick`.
set -euo pipefail
out=${1:-out/demo}
medqwen() { echo "+ medqwen $*" >&2; .venv/bin/medqwen "$@"; }
mkdir -p "$out"
medqwen validate recipes/debug/tiny.yaml --format table
.venv/bin/python -c "from medqwen_cli.modeling import resolve_base; i = resolve_base('tiny-qwen2-vl'); print(f'base {i.model_id}: {i.path} (fingerprint {i.fingerprint})')"
