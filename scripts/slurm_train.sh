#!/bin/bash
# Multi-node training under SLURM: one torchrun launcher per node, each starting one worker per GPU; the nodes
# meet through torchrun's c10d rendezvous on the first node of the allocation.
#
#   sbatch --nodes=4 scripts/slurm_train.sh configs/llama3-8b.yaml [section.key=value ...]
#
# Re-submitting the same command resumes from the latest checkpoint in train.out_dir (train.resume=auto).
# train.out_dir must be on a filesystem every node sees (rank 0 writes the checkpoints), and so must
# data.dataset_dir: prepare the dataset once before the first job (data/prepare_data.py), since the other ranks
# would otherwise wait for rank 0's preparation inside a collective with a timeout.
#
# Edit the #SBATCH lines for your cluster (partition, account, GPUs per node); GPUS_PER_NODE and MASTER_PORT
# can be overridden from the environment.

#SBATCH --job-name=mini-llm
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=32
#SBATCH --time=24:00:00
#SBATCH --output=%x-%j.out
# SIGTERM to every task 5 minutes before the time limit: torchrun forwards it to the workers, which finish the
# current step, save a checkpoint and exit (given --shutdown-timeout below to do it before SIGKILL).
#SBATCH --signal=TERM@300

set -euo pipefail

if [ $# -lt 1 ]; then
    echo "usage: sbatch [--nodes=N] scripts/slurm_train.sh CONFIG.yaml [section.key=value ...]" >&2
    exit 2
fi
config=$1
shift

cd "${SLURM_SUBMIT_DIR:-$(dirname "$0")/..}"
python=${PYTHON:-.venv/bin/python}
gpus_per_node=${GPUS_PER_NODE:-${SLURM_GPUS_ON_NODE:-8}}
head_node=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
port=${MASTER_PORT:-29500}

echo "job $SLURM_JOB_ID: $SLURM_NNODES node(s) x $gpus_per_node GPU(s), rendezvous at $head_node:$port"

# --kill-on-bad-exit: if one node's launcher fails, stop the others instead of leaving them waiting.
srun --kill-on-bad-exit=1 "$python" -m torch.distributed.run \
    --nnodes="$SLURM_NNODES" \
    --nproc_per_node="$gpus_per_node" \
    --rdzv_id="$SLURM_JOB_ID" \
    --rdzv_backend=c10d \
    --rdzv_endpoint="$head_node:$port" \
    --shutdown-timeout=280 \
    run_train.py --config "$config" "$@"
