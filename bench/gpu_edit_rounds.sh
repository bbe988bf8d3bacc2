#!/usr/bin/env bash
# SeedEdit alignment rounds at GPU scale (issue 7), as run on a lent device machine (BENCHMARKS.md, "At GPU scale",
# says which and what it measured). That machine's python3 holds torch and transformers but not diffusers: the
# wheels travel in .whl/ (diffusers==0.42.1, importlib_metadata==8.7.0) and are installed to /tmp/site when present.
# Results (JSON, log, picture grids, the editor of the last finished round as editor.tgz) go to $OUT. Extra
# arguments are passed to bench/edit_quality.py after the defaults below, so they override them (a CPU check:
# --device cpu --pairs 16 ...). On an H200 round 1 takes about 5 minutes and each later round about 4, so the
# bench stops itself after BENCH_LIMIT_S seconds (default 540, inside a 10-minute call) and the editor still
# comes back.
set -uo pipefail
OUT=${OUT:-/tmp/gpu_edit_rounds}
mkdir -p "$OUT"
source bench/gpu_env.sh
EDITOR=/tmp/gpu_edit_rounds_editor
rm -rf "$EDITOR"
{
  $PY -c "import torch, diffusers, transformers; print('torch', torch.__version__, 'diffusers', diffusers.__version__,
'transformers', transformers.__version__, torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU')"
  timeout --signal=INT "${BENCH_LIMIT_S:-540}" $PY bench/edit_quality.py --device cuda \
    --out "$OUT/edit_quality_gpu.json" --rounds 2 --pairs 1280 --steps 3000 --round-steps 1500 --batch-size 64 \
    --lr 5e-4 --archs causal --init t2i --eval-per-kind 32 --train-text-encoder --later-min-agreement 1.0 \
    --candidates 4 --checkpoint-every 500 --save-editor "$EDITOR" "$@"
} 2>&1 | tee "$OUT/edit_quality_gpu.log"
status=$?
if [ -d "$EDITOR" ]; then tar czf "$OUT/editor.tgz" -C "$EDITOR" .; fi
exit $status
