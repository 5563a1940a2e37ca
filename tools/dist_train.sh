#!/usr/bin/env bash
# Distributed training with torchrun (torch.distributed.launch is deprecated).
#   tools/dist_train.sh CONFIG NPROC [tools/train.py options]
# NPROC processes on this node (one per GPU; on a CPU-only machine the processes share the
# cores and talk over gloo). Several nodes: run the same command on every node with
#   NNODES=2 NODE_RANK=0|1 MASTER_ADDR=<node 0 address> PORT=29500
# Environment: NNODES (1), NODE_RANK (0), MASTER_ADDR (127.0.0.1), PORT (29500),
# PYTHON (the repository's .venv/bin/python if there, else python).
set -e
CONFIG=$1
NPROC=$2
if [ -z "$CONFIG" ] || [ -z "$NPROC" ]; then
    echo "usage: $0 CONFIG NPROC [train.py options]" >&2
    exit 2
fi
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
PORT=${PORT:-29500}
MASTER_ADDR=${MASTER_ADDR:-"127.0.0.1"}
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
if [ -z "$PYTHON" ]; then
    if [ -x "$ROOT/.venv/bin/python" ]; then PYTHON="$ROOT/.venv/bin/python"; else PYTHON=python; fi
fi

PYTHONPATH="$ROOT":$PYTHONPATH \
"$PYTHON" -m torch.distributed.run \
    --nnodes=$NNODES \
    --node_rank=$NODE_RANK \
    --master_addr=$MASTER_ADDR \
    --master_port=$PORT \
    --nproc_per_node=$NPROC \
    "$ROOT/tools/train.py" \
    $CONFIG \
    --launcher pytorch "${@:3}"
