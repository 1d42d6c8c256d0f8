#!/usr/bin/env bash
# `make bench`: the CPU benchmarks of docs/BENCHMARKS.md, one JSON line per result.
# Generates its own data under bench/out/ (git-ignored). GPU figures: bash bench/gpu_check.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
OUT=bench/out
mkdir -p "$OUT"
for size in 112 64; do
  if [ ! -f "$OUT/ds$size/data/manifest.csv" ]; then
    "$PY" - "$OUT/ds$size" "$size" <<'PYEOF'
import sys
sys.path.insert(0, "tests")
from helpers import make_dataset
make_dataset(sys.argv[1], n_studies=12, videos_per_study=(2, 4), frames=(40, 100), size=int(sys.argv[2]))
PYEOF
  fi
done
echo "# loader: ours vs the published per-sample path (same AVI-encoded videos, 2 workers)"
"$PY" bench/loader.py --data "$OUT/ds112/data" --split all --method echoclr
"$PY" bench/loader.py --data "$OUT/ds112/data" --split all --method simclr
echo "# pipeline efficiency: end-to-end pretrain clips/s / pure compute clips/s (demo profile)"
"$PY" bench/pipeline.py --data "$OUT/ds112/data" --split train,val,test --steps 8
"$PY" bench/pipeline.py --data "$OUT/ds64/data" --split train,val,test --steps 8
echo "# preprocess: 1 vs 2 workers, peak RSS 100 vs 1000 videos"
"$PY" bench/preprocess.py --small 100 --large 1000
