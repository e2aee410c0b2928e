#!/usr/bin/env bash
# The ASR benchmark on an NVIDIA GPU, in one command:
#
#     bench/gpu.sh [OUT_DIR]        (default bench-out/gpu)
#
# Runs, from the repository root:
#   1. python -m bench asr --device cuda --models tiny.en,large-v3-turbo --out OUT_DIR
#      latency and RTF per engine and model on the fixed clips → OUT_DIR/asr.json
#   2. the batch variant: openai-whisper's batched decoding alone, batches 1, 8, 32 and 64
#      → OUT_DIR/batch/asr.json
#
# Needs the project installed with a CUDA build of torch (the README says how) and an NVIDIA
# driver. tiny.en is bundled with the project. large-v3-turbo is downloaded on first use, so
# the first run needs the network: about 1.6 GB for openai-whisper (into ~/.cache/whisper)
# and as much again for faster-whisper's CTranslate2 copy (from the Hugging Face hub, into
# ~/.cache/huggingface). Later runs load from those caches. A model that cannot load is
# skipped with a note and the rest still run.
#
# Environment: PYTHON (default .venv/bin/python if present, else python), MODELS
# (default tiny.en,large-v3-turbo), BATCHES (default 1,8,32,64), REPEAT (default 10).
set -euo pipefail

cd "$(dirname "$0")/.."
out="${1:-bench-out/gpu}"
models="${MODELS:-tiny.en,large-v3-turbo}"
batches="${BATCHES:-1,8,32,64}"
repeat="${REPEAT:-10}"
if [[ -z "${PYTHON:-}" ]]; then
    if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python; fi
fi

if ! nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader; then
    echo "bench/gpu.sh: no NVIDIA GPU here (nvidia-smi failed)" >&2
    exit 1
fi
"$PYTHON" -c 'import sys, torch
sys.exit(0 if torch.cuda.is_available() else
         f"bench/gpu.sh: torch {torch.__version__} sees no CUDA device: install its CUDA build")'

export PYTHONUNBUFFERED=1
status=0
"$PYTHON" -m bench asr --device cuda --models "$models" --repeat "$repeat" --batch '' \
    --out "$out" || status=1
"$PYTHON" -m bench asr --device cuda --models "$models" --repeat "$repeat" \
    --batch-only --batch "$batches" --out "$out/batch" || status=1
echo "bench/gpu.sh: results in $out/asr.json and $out/batch/asr.json"
exit "$status"
