#!/usr/bin/env bash
# A Cloud TPU VM pod slice: the same command on every worker, through
# `gcloud compute tpus tpu-vm ssh --worker=all`. JAX finds the coordinator and each
# worker's process id in the TPU metadata (main.py --distributed).
#
#   launch/tpu_pod.sh setup TPU_NAME ZONE
#       copies this repository to ~/ddfp-jax on every worker and installs the requirements
#       with the TPU build of JAX
#   launch/tpu_pod.sh run TPU_NAME ZONE CONFIG WORKDIR [--config.KEY=VALUE ...]
#       trains on every worker (bfloat16 compute; add --config.model.dtype=float32 to
#       override), WORKDIR a gs:// path or a file system all workers mount
#   launch/tpu_pod.sh stop TPU_NAME ZONE
#       ends main.py on every worker (after a failed or interrupted run)
#
# Every worker runs one process over its local TPU cores; the global batch is
# data.{labeled,unlabeled}_per_device x all cores of the slice. Data: prepared TFDS files
# on a bucket or a shared disk (--config.data.data_dir), readable from every worker.
set -euo pipefail
usage() { sed -n '2,17p' "$0"; exit 2; }
[ $# -ge 3 ] || usage
ACTION=$1; TPU=$2; ZONE=$3; shift 3
REPO_DIR=${REPO_DIR:-ddfp-jax}   # relative to the home directory on the workers
ssh_all() {
  gcloud compute tpus tpu-vm ssh "$TPU" --zone "$ZONE" --worker=all --command "$1"
}
case "$ACTION" in
  setup)
    cd "$(dirname "$0")/.."
    ssh_all "mkdir -p ~/$REPO_DIR"
    gcloud compute tpus tpu-vm scp --recurse --zone "$ZONE" --worker=all \
      configs ddfp_jax launch main.py requirements.txt "$TPU:~/$REPO_DIR/"
    ssh_all "cd ~/$REPO_DIR && pip install -r requirements.txt && pip install -U 'jax[tpu]'"
    ;;
  run)
    [ $# -ge 2 ] || usage
    CONFIG=$1; WORKDIR=$2; shift 2
    EXTRA=$(printf ' %q' "$@")
    ssh_all "cd ~/$REPO_DIR && python3 main.py --distributed --config $CONFIG \
      --workdir $WORKDIR --config.model.dtype=bfloat16 $EXTRA"
    ;;
  stop)
    ssh_all "pkill -INT -u \$USER -f '[m]ain.py --distributed' || true"
    ;;
  *) usage ;;
esac
