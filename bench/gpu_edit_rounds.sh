#!/usr/bin/env bash
# SeedEdit alignment rounds at GPU scale (issue 7), as run on a lent device machine (BENCHMARKS.md says which
# and what it measured). That machine's python3 holds torch and transformers but not diffusers: the wheels
# travel in .whl/ (diffusers==0.42.1, importlib_metadata==8.7.0) and are installed to /tmp/site when present.
# Results (JSON, log, picture grids, the last editor as editor.tgz) go to $OUT. Extra arguments are passed to
# bench/edit_quality.py after the defaults below, so they override them (a CPU check: --device cpu --pairs 16 ...).
set -euo pipefail
OUT=${OUT:-/tmp/gpu_edit_rounds}
mkdir -p "$OUT"
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 TQDM_MININTERVAL=30 HF_HUB_OFFLINE=1
PY=${PY:-python3}
$PY -c "import torch, diffusers, transformers; print('torch', torch.__version__, 'diffusers', diffusers.__version__,
'transformers', transformers.__version__, torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU')"
rm -rf /tmp/gpu_edit_rounds_editor
set -o pipefail
$PY bench/edit_quality.py --device cuda --out "$OUT/edit_quality_gpu.json" --rounds 3 --pairs 1280 --steps 3000 \
  --round-steps 1500 --batch-size 64 --lr 5e-4 --archs causal --init t2i --eval-per-kind 32 --train-text-encoder \
  --later-min-agreement 1.0 --candidates 4 --checkpoint-every 500 --save-editor /tmp/gpu_edit_rounds_editor "$@" \
  2>&1 | tee "$OUT/edit_quality_gpu.log"
tar czf "$OUT/editor.tgz" -C /tmp/gpu_edit_rounds_editor .
