#!/usr/bin/env bash
# One machine, all its GPUs: one process, the train step pmapped over every local GPU.
#
#   launch/single_node_gpus.sh CONFIG WORKDIR [--config.KEY=VALUE ...]
#   CUDA_VISIBLE_DEVICES=0,1,2,3 launch/single_node_gpus.sh configs/ddfp/pascal_732.py /ckpt/voc_732
#
# The global batch is data.{labeled,unlabeled}_per_device x the number of GPUs, and the
# learning rate follows it (optim.lr_scaling; docs/scaling_out.md). Rerunning the same
# command resumes from the last checkpoint in WORKDIR.
set -euo pipefail
if [ $# -lt 2 ]; then
  sed -n '2,9p' "$0"; exit 2
fi
CONFIG=$1; WORKDIR=$2; shift 2
cd "$(dirname "$0")/.."
# JAX preallocates 75% of each GPU's memory by default; the input pipeline's TensorFlow is
# kept off the GPUs by main.py.
exec python main.py --config "$CONFIG" --workdir "$WORKDIR" "$@"
