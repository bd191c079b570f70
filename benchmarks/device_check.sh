#!/usr/bin/env bash
# The GPU device check (docs/speed.md, "Device check"): the model microbenchmarks that
# say how fast ddfp-jax runs on one accelerator, in at most DEVICE_CHECK_BUDGET_S seconds
# (default 480: 8 minutes) of wall clock, compiles included.
#
#   bash benchmarks/device_check.sh            # on the GPU machine, from the repo root
#
# Stages, in order of what matters most if the budget runs out (each a separate
# `python -m benchmarks.model` process, cut at its share of what is left; a cut stage
# keeps the rows it finished, since benchmarks.model writes its results after every
# case):
#   1. paper shapes (crop 513, 4 + 4), bfloat16: the ASPP forms (dilated, space_to_batch,
#      shifted, undilated), the model forward and forward + backward;
#   2. the same ASPP forms and forward + backward in float32;
#   3. one whole DDFP step, bfloat16;
#   4. Cityscapes' 769 crop, bfloat16: forward + backward.
# Every case reports its compile time, median step time, XLA FLOPs and, on GPU/TPU, the
# allocator's peak memory; the rows merge into results/model_<device>.{json,md}.
#
# The machine needs the runtime dependencies: jax with its GPU plugin, flax, optax, chex
# and orbax are in the usual CUDA images; distrax (with tensorflow-probability) and
# ml_collections often are not. `python3 -c "import ddfp_jax"` says at once.
#
# Environment: DEVICE_CHECK_BUDGET_S (480), DEVICE_CHECK_OUT (results),
# DEVICE_CHECK_SHAPES (paper), DEVICE_CHECK_SHAPES_769 (paper_769), DEVICE_CHECK_REPEATS
# (10), DEVICE_CHECK_PYTHON (python3). The tests run it on the CPU at the "tiny" shapes.
set -uo pipefail
cd "$(dirname "$0")/.."

budget=${DEVICE_CHECK_BUDGET_S:-480}
out_dir=${DEVICE_CHECK_OUT:-results}
shapes=${DEVICE_CHECK_SHAPES:-paper}
shapes_769=${DEVICE_CHECK_SHAPES_769:-paper_769}
repeats=${DEVICE_CHECK_REPEATS:-10}
python=${DEVICE_CHECK_PYTHON:-python3}
aspp=aspp,aspp_space_to_batch,aspp_shifted,aspp_undilated
start=$(date +%s)
status=0

if ! PYTHONPATH=. "$python" -c "import ddfp_jax" 2>/dev/null; then
  echo "device_check: 'import ddfp_jax' fails with $python: install the runtime" \
       "dependencies (requirements.txt; distrax and ml_collections are the ones CUDA" \
       "images lack) and run it again." >&2
  exit 2
fi

stage() {   # stage SHARE_S BENCHMARK_ARGS...
  local share=$1 left
  shift
  left=$(( budget - ($(date +%s) - start) ))
  (( share > left )) && share=$left
  if (( share < 20 )); then
    echo "device_check: budget spent, skipped: $*"
    status=1
    return
  fi
  echo "device_check: up to ${share} s: $*"
  PYTHONPATH=. PYTHONUNBUFFERED=1 timeout --signal=TERM "$share" "$python" -m benchmarks.model \
      --out_dir "$out_dir" --repeats "$repeats" --warmup 3 "$@"
  local rc=$?
  if (( rc != 0 )); then
    echo "device_check: stage ended with exit code $rc (124: cut at ${share} s): $*"
    status=1
  fi
}

stage 180 --shapes "$shapes" --dtypes bfloat16 --benchmarks "$aspp,model_forward,model_train"
stage 120 --shapes "$shapes" --dtypes float32 --benchmarks "$aspp,model_train"
stage 110 --shapes "$shapes" --dtypes bfloat16 --benchmarks train_step
stage 70 --shapes "$shapes_769" --dtypes bfloat16 --benchmarks model_train
echo "device_check: done in $(( $(date +%s) - start )) s; results in $out_dir"
exit $status
