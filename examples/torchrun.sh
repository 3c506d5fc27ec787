#!/usr/bin/env bash
# dtrain under torchrun (from PyTorch): NPROC ranks per node; rank 0 trains and the others join it. torchrun's
# own rendezvous store holds MASTER_PORT, so dtrain's rank 0 listens on MASTER_PORT + 1 (or --port).
#   examples/torchrun.sh 4 --epochs 1                     4 ranks on this node (--standalone)
#   NNODES=2 RDZV=node0:29400 DTRAIN_TOKEN=… examples/torchrun.sh 4 --epochs 1
#                                                         the same on each of 2 nodes, meeting at node0
set -euo pipefail
nproc=${1:-4}
shift || true
if [ -n "${NNODES:-}" ]; then
  rendezvous=(--nnodes "$NNODES" --rdzv-backend c10d --rdzv-endpoint "$RDZV" --rdzv-id "${RDZV_ID:-dtrain}")
else
  rendezvous=(--standalone)
fi
# --no-python: the command is dtrain itself, not a Python script.
exec torchrun "${rendezvous[@]}" --nproc-per-node "$nproc" --no-python npx dtrain run "$@"
