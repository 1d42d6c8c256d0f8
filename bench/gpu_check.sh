#!/usr/bin/env bash
# GPU check in ONE call, with a hard time cap: writes $OUT/gpu_check.json after every case.
#
#   bash bench/gpu_check.sh            # the real check (CUDA), hard cap GPU_CHECK_CAP_S=420 s
#   bash bench/gpu_check.sh --tiny     # the same cases at CPU smoke sizes, cap 115 s
#   extra flags go to bench/gpu_check.py (--only a,b  --device cuda:1)
#
# Cases (bench/gpu_cases.py): versions; conv3d_bf16 (bf16 vs fp32 error and speed at the real
# r3d_18 / r2plus1d_18 layer shapes); pretrain_b196 / pretrain_b392 / finetune_b88 (fp32 as
# published vs our default: bf16 + channels_last_3d + cudnn.benchmark; clips/s, peak memory);
# loader (the product's loader at 4/8/12 workers, prefetch queue drained first); e2e_pretrain
# (Engine.fit back to back, share of time waiting for data); eval_blocks (evaluation at two
# block sizes); engine_overhead (product step vs bare step); *_compile (torch.compile).
# One failing case never stops the rest; if the process dies inside a case (native crash) it
# is re-launched with --continue (3 launches at most) and that case is recorded as crashed.
#
# The lent GPU image has no pydantic (needed by echoclr_cli.config.schema): when it is missing and
# bench/.gpuwheels/*.whl exist (built here by `bash bench/gpu_wheels.sh`, carried with
# carry: ["bench/.gpuwheels"]), they are installed offline into a private folder first.
# Exit status: 0 when every case was run or recorded (failed cases are in the JSON), 124 when
# the hard cap stopped it, else the runner's status.
set -u
cd "$(dirname "$0")/.."
TINY=0
for a in "$@"; do [ "$a" = "--tiny" ] && TINY=1; done
if [ "$TINY" = 1 ]; then CAP=${GPU_CHECK_CAP_S:-115}; else CAP=${GPU_CHECK_CAP_S:-420}; fi
START=$(date +%s)
DEADLINE=$((START + CAP))
PY=${PYTHON:-python3}
[ -z "${PYTHON:-}" ] && [ -x .venv/bin/python ] && PY=.venv/bin/python
OUT=${OUT:-$PWD/bench/out}
mkdir -p "$OUT"
JSON="$OUT/gpu_check.json"
rm -f "$JSON"
export PYTHONUNBUFFERED=1

if ! "$PY" -c "import pydantic" 2>/dev/null; then
  if compgen -G "bench/.gpuwheels/*.whl" >/dev/null; then
    SITE="${TMPDIR:-/tmp}/echoclr_gpu_site"
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target "$SITE" bench/.gpuwheels/*.whl || echo "gpu_check: installing bench/.gpuwheels failed"
    export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
  else
    echo "gpu_check: pydantic is missing and bench/.gpuwheels is empty: run 'bash bench/gpu_wheels.sh' and carry bench/.gpuwheels"
  fi
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

rc=1
for launch in 1 2 3; do
  left=$((DEADLINE - $(date +%s) - 5))  # 5 s kept for the final JSON
  if [ "$left" -le 3 ]; then rc=124; break; fi
  cont=()
  [ "$launch" -gt 1 ] && cont=(--continue)
  timeout -k 5 "$left" "$PY" bench/gpu_check.py --out "$JSON" --deadline "$((DEADLINE - 5))" \
    "${cont[@]}" "$@"
  rc=$?
  [ "$rc" = 0 ] && break
  if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then rc=124; break; fi
  [ "$rc" = 2 ] && break  # usage error
  echo "gpu_check: the runner exited with status $rc inside a case; launching again (--continue)"
done
if [ "$rc" = 124 ]; then
  "$PY" bench/gpu_check.py --out "$JSON" --finalize "stopped by the hard cap of ${CAP} s"
fi
echo "gpu_check: $JSON ($(( $(date +%s) - START )) s, status $rc)"
exit "$rc"
