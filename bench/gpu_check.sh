#!/usr/bin/env bash
# GPU check, under 5 minutes on one H100: prints JSON lines with
#   1. torch / CUDA / cuDNN versions and the device,
#   2. pretrain (4x112x112, batch 196 pairs) and fine-tune (16x112x112, batch 88) clips/s and
#      peak memory, fp32 (published setup) vs our default (bf16 + channels_last_3d +
#      cudnn.benchmark); pass --compile to also time torch.compile,
#   3. end-to-end pipeline efficiency (real loader + device augmentation + model step) on a
#      dataset it generates itself (paper profile, bf16),
#   4. loader throughput vs the published per-sample path on the same videos.
# Uses .venv/bin/python when present, else python3. Usage: bash bench/gpu_check.sh [--compile]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=python3
[ -x .venv/bin/python ] && PY=.venv/bin/python
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
WORKERS=${WORKERS:-8}
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT

"$PY" bench/gpu_bench.py "$@"

"$PY" - "$TMP" <<'PYEOF'
import sys
sys.path.insert(0, "tests")
from helpers import make_dataset
make_dataset(sys.argv[1], n_studies=200, videos_per_study=(2, 4), frames=(40, 100), size=112)
PYEOF

"$PY" bench/pipeline.py --data "$TMP/data" --profile paper --device cuda --bf16 \
  --split train,val,test --workers "$WORKERS" --steps 8
"$PY" bench/loader.py --data "$TMP/data" --device cuda --split all --workers "$WORKERS" \
  --batch-size 196 --batches 10 --ref-batches 2 --rounds 1
