#!/usr/bin/env bash
# `echoclr report` on a real tiny run over the synthetic archive, rendered by headless Chromium.
# Usage: bash bench/report_screenshot.sh [WORKDIR]   (needs chromium-headless-shell or chromium)
# Writes WORKDIR/report.html (+ .md, _files/, .model_card.json) and WORKDIR/report.png, and
# copies the top of the page to docs/img/report.png. About 3 minutes on 2 CPU cores.
set -euo pipefail
R=${1:-/tmp/echoclr_report_bench}
E="python -m echoclr_cli"
S=(--profile demo --set runtime.device=cpu)
mkdir -p "$R"
[ -f "$R/raw/synth.json" ] || $E synth "$R/raw" "${S[@]}" -q --set synth.studies=120 \
  --set synth.height=96 --set synth.width=128 --set synth.min_frames=16 \
  --set synth.max_frames=24 --set synth.max_videos=2 --set synth.external_frac=0.25
[ -f "$R/data/manifest.csv" ] || $E preprocess --input "$R/raw" --output "$R/data" --size 32 \
  "${S[@]}" -q
[ -f "$R/run/metrics.json" ] || $E finetune --data "$R/data" --task lvh --out "$R/run" \
  "${S[@]}" -q --set model.width=0.125 --set finetune.epochs=4 --set finetune.clip_len=4 \
  --set evaluate.bootstrap=200 --set evaluate.calibrate=temperature
$E report "$R/run" --out "$R/report.html" --overwrite
B=$(command -v chromium-headless-shell || command -v chromium || command -v chromium-browser)
"$B" --headless --no-sandbox --disable-gpu --hide-scrollbars --window-size=1100,1500 \
  --host-resolver-rules="MAP * ~NOTFOUND" --screenshot="$R/report.png" "file://$R/report.html"
mkdir -p docs/img
cp "$R/report.png" docs/img/report.png
echo "screenshot: $R/report.png -> docs/img/report.png"
