#!/usr/bin/env bash
# PeFL, Diffusion-DPO and online GRPO on the same labels at GPU scale, both tastes, and online GRPO of the
# instruction editor (issue 34), as run on a lent device machine in one 10-minute call (BENCHMARKS.md says what it
# measured). That machine's python3 holds torch and transformers, not the platform's other needs: their wheels
# travel in .whl/ (cp312, the versions of this project's lock) and are installed to /tmp/site when present. The
# taste-independent rewards (alignment, coherence) come trained in --cache (.editloop/bench/feedback_cache, carried).
#
# First a smoke run of every code path on the GPU at toy sizes (a minute; a failure stops the call there and costs
# little), then the benches BENCHES names (default: default, the method table on the default taste; also reversed
# and instruct, bench/instruct_grpo.py), at once on the one GPU. Three at once did not finish a method in 490 s on
# the first H200 run (BENCHMARKS.md): run one per call. METHODS names the table's methods (default all four); the
# smoke runs only those, and the instruction editor's smoke only when BENCHES names instruct. Each bench is stopped
# by SIGINT at the call's deadline (BENCH_DEADLINE_S after the start, default 560) and keeps what it finished: the
# benches write their JSON after every method, and tqdm logs each run's step rate every 30 s. Results: $OUT/*.json,
# the grids, one log.
set -uo pipefail
START=$(date +%s)
OUT=${OUT:-/tmp/gpu_method_compare}
mkdir -p "$OUT"
source bench/gpu_env.sh
CACHE=${CACHE:-.editloop/bench/feedback_cache}
DEVICE=${DEVICE:-cuda}  # DEVICE=cpu SMOKE_ONLY=1: the smoke here, a check of this script
LOGS=/tmp/gpu_method_compare_logs
rm -rf "$LOGS" && mkdir -p "$LOGS"
collect() { for f in "$LOGS"/*.log; do echo "===== $(basename "$f")"; cat "$f"; done > "$OUT/log.txt"; }
trap collect EXIT

$PY -c "import torch, diffusers, transformers, sqlalchemy; print('torch', torch.__version__, 'diffusers',
diffusers.__version__, 'transformers', transformers.__version__, torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU')" || exit 1

BENCHES=",${BENCHES:-default},"
METHODS=${METHODS:-pefl,dpo,grpo,grpo-no-coherence}  # which methods the method table trains (bench/method_compare.py)

# 1. smoke: every path the benches will take, on the GPU at toy sizes, at once
SMOKE=(--sets 8 --reward-steps 10 --pefl-steps 2 --dpo-steps 2 --grpo-steps 2 --eval 6 --batch-size 4 --image-only-reward)
$PY bench/method_compare.py --device "$DEVICE" --tastes reversed --guidances 1.0,2.5,4.0,7.0 "${SMOKE[@]}" \
  --methods "$METHODS" --cache "$CACHE" --out /tmp/smoke/mc.json > "$LOGS/0-smoke-method-compare.log" 2>&1 &
A=$!
B=
if [[ $BENCHES == *",instruct,"* ]]; then
  $PY bench/instruct_grpo.py --device "$DEVICE" --steps 2 --batch-size 2 --group 2 --eval-per-kind 1 --runs grpo \
    --cache "$CACHE" --out /tmp/smoke/ig.json > "$LOGS/1-smoke-instruct.log" 2>&1 &
  B=$!
fi
wait $A || { echo "smoke: method_compare failed"; exit 1; }
[ -z "$B" ] || wait $B || { echo "smoke: instruct_grpo failed"; exit 1; }
echo "smoke passed after $(( $(date +%s) - START )) s"
[ -n "${SMOKE_ONLY:-}" ] && exit 0

# 2. the benches BENCHES names, at once, each stopped at the deadline
LEFT=$(( ${BENCH_DEADLINE_S:-560} - ($(date +%s) - START) ))
FULL=(--device "$DEVICE" --threads 4 --guidances 1.0,2.5,4.0,7.0 --sets "${SETS:-960}" --reward-steps 1500
      --pefl-steps "${PEFL_STEPS:-200}" --dpo-steps "${DPO_STEPS:-600}" --grpo-steps "${GRPO_STEPS:-100}"
      --batch-size 16 --eval "${EVAL:-192}" --methods "$METHODS" --image-only-reward --cache "$CACHE")
for taste in default reversed; do
  [[ $BENCHES == *",$taste,"* ]] || continue
  timeout --signal=INT "$LEFT" $PY bench/method_compare.py "${FULL[@]}" --tastes $taste \
    --out "$OUT/method_compare_gpu_$taste.json" > "$LOGS/2-method-compare-$taste.log" 2>&1 &
done
[[ $BENCHES == *",instruct,"* ]] && timeout --signal=INT "$LEFT" $PY bench/instruct_grpo.py --device "$DEVICE" \
  --threads 4 --steps "${INSTRUCT_STEPS:-150}" --batch-size 16 --group 4 --eval-per-kind 16 --cache "$CACHE" \
  --out "$OUT/instruct_grpo_gpu.json" > "$LOGS/3-instruct-grpo.log" 2>&1 &
wait
echo "done after $(( $(date +%s) - START )) s"
