#!/usr/bin/env bash
# Build bench/.gpuwheels: the wheels the lent GPU machine lacks (its image has python 3.12,
# torch, numpy, pandas, pyyaml, typer, rich, opencv, scipy, scikit-learn, torchmetrics but no
# pydantic or pydicom). Pure download of manylinux / py3 wheels for CPython 3.12 x86_64, no
# dependencies resolved (each one is named), one version each; works offline with the mirror.
# bench/gpu_check.sh installs them there with pip --no-index into a private folder.
#   bash bench/gpu_wheels.sh            # then carry: ["bench/.gpuwheels"]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -z "${PYTHON:-}" ] && [ -x .venv/bin/python ] && PY=.venv/bin/python
DEST=bench/.gpuwheels
rm -rf "$DEST"
mkdir -p "$DEST"
# versions: those of our venv when it has them, so the check runs what the tests ran
ver() { "$PY" -c "import importlib.metadata as m; print(m.version('$1'))" 2>/dev/null || true; }
pkgs=()
for p in pydantic pydantic-core annotated-types typing-inspection typing-extensions pydicom; do
  v=$(ver "$p")
  pkgs+=("$p${v:+==$v}")
done
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 -d "$DEST" "${pkgs[@]}"
ls -1 "$DEST"
du -sh "$DEST"
