#!/usr/bin/env bash
# dtrain under Open MPI's mpirun (MPICH's mpiexec works the same way): one rank per slot; rank 0 trains
# and every other rank joins it as a remote worker. Run from the dtrain directory (the same path on every host).
#   examples/mpirun.sh 4 --epochs 1                  4 ranks on this host (no token: rank 0 listens on loopback)
#   HOSTFILE=hosts examples/mpirun.sh 8 --epochs 1   8 ranks over the hosts of a hostfile; rank 0 on its first
set -euo pipefail
np=${1:-4}
shift || true
args=(-np "$np")
if [ -n "${HOSTFILE:-}" ]; then
  # mpirun names no host to its ranks: tell them where rank 0 is, and give them a shared token (-x passes
  # the variables on without putting the token in any process's arguments).
  export DTRAIN_COORDINATOR=${DTRAIN_COORDINATOR:-$(awk 'NF && $1 !~ /^#/ { print $1; exit }' "$HOSTFILE")}
  export DTRAIN_TOKEN=${DTRAIN_TOKEN:-$(openssl rand -hex 32)}
  args+=(--hostfile "$HOSTFILE" -x DTRAIN_COORDINATOR -x DTRAIN_TOKEN)
fi
exec mpirun "${args[@]}" npx dtrain run "$@"
