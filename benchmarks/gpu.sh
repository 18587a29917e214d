#!/usr/bin/env bash
# Every CUDA check and GPU benchmark in one run, for a machine with one NVIDIA GPU (about 7 minutes on an H200):
#
#     OUT=benchmarks/results/gpu bash benchmarks/gpu.sh
#
# 1. `pytest -m cuda` (bf16 autocast, fp16 with the gradient scaler, compile, fused AdamW, exact resume, FSDP2's
#    mixed precision over NCCL, compiled CUDA-graph decode against eager), and beside it the CLI end to end:
#    run_train.py on the tiny preset compiled in bf16, the same under torchrun with FSDP2, then run_inference.py
#    with --compile.
# 2. Then, alone on the GPU: training MFU of gpt2-small, 350m and 1b at sequence 2048 in bf16 with compile
#    (benchmarks/train_throughput.py; transformers under bf16 autocast as the peer for gpt2-small and 1b), and
#    decode of 1b in bf16 against the bandwidth bound and transformers' generate() (benchmarks/decode.py).
#
# Every step has its own time limit, so one that hangs costs only its own slot. Logs and JSON go to $OUT. Where the
# tree is a copy (its .git missing or stale), set MINI_LLM_COMMIT to the commit it is, for the environment record.
# PARTS=tests or PARTS=bench runs one half only.
set -u
OUT=${OUT:-benchmarks/results/gpu}
PARTS=${PARTS:-all}
PY=${PY:-python3}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false

step() {  # step NAME SECONDS LOG COMMAND...: run with a time limit, log, and record its exit status and time
    local name=$1 limit=$2 log=$3
    shift 3
    local start=$SECONDS
    echo "=== $name: $*" >>"$log"
    timeout -k 10 "$limit" "$@" >>"$log" 2>&1
    local rc=$?
    echo "=== $name: exit $rc after $((SECONDS - start)) s" | tee -a "$log" "$OUT/summary.txt"
    [ "$rc" -eq 0 ] || echo "$name" >>"$OUT/.failed"
}

{
    date -u
    echo "commit ${MINI_LLM_COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}"
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv
    $PY -c "import torch, transformers; print('torch', torch.__version__, 'cuda', torch.version.cuda, \
'transformers', transformers.__version__, torch.cuda.get_device_name())"
} >"$OUT/summary.txt" 2>&1

rm -f "$OUT/.failed"
# 1. Correctness: the CUDA tests and the CLI, side by side (neither is timed).
if [ "$PARTS" != bench ]; then
: >"$OUT/pytest.log"
: >"$OUT/cli.log"
rm -rf out/gpu-tiny out/gpu-tiny-fsdp  # fresh runs: an old one would resume at its end and train nothing
step "pytest -m cuda" 240 "$OUT/pytest.log" $PY -m pytest -m cuda -p no:cacheprovider -q \
    tests/train/test_cuda.py tests/inference/test_generator.py tests/distributed/test_mixed_precision.py &
(
    TINY="--config configs/tiny.yaml train.device=cuda train.precision=bf16 train.compile=true"
    step "run_train tiny (cuda, bf16, compile)" 150 "$OUT/cli.log" $PY run_train.py $TINY train.out_dir=out/gpu-tiny
    step "torchrun FSDP2 tiny" 120 "$OUT/cli.log" $PY -m torch.distributed.run --standalone --nproc_per_node 1 \
        run_train.py $TINY train.parallel=fsdp train.max_steps=100 train.out_dir=out/gpu-tiny-fsdp
    step "run_inference --compile" 90 "$OUT/cli.log" $PY run_inference.py --checkpoint out/gpu-tiny --device cuda \
        --compile --prompt "def fibonacci(n):" --max-new-tokens 200 --temperature 0
) &
wait
fi

# 2. Speed, one benchmark at a time.
B="$OUT/bench.log"
if [ "$PARTS" != tests ]; then
: >"$B"
SEQ="train.device=cuda train.precision=bf16 train.compile=true train.parallel=none train.seq_len=2048 \
model.max_seq_len=2048"
step "train gpt2-small" 100 "$B" $PY benchmarks/train_throughput.py --config configs/gpt2-small.yaml $SEQ \
    train.micro_batch_size=16 train.batch_size=16 --peer-precisions bf16 --out "$OUT/train-gpt2-small.json"
step "decode 1b" 150 "$B" $PY benchmarks/decode.py --config configs/1b.yaml --device cuda --dtype bf16 \
    --batch-sizes 1 --new-tokens 128 --repeats 2 --no-cache-repeats 0 --compile on --no-defaults \
    --out "$OUT/decode-1b.json"
step "train 350m" 80 "$B" $PY benchmarks/train_throughput.py --config configs/350m.yaml $SEQ \
    train.micro_batch_size=16 train.batch_size=16 --no-hf --out "$OUT/train-350m.json"
step "train 1b" 150 "$B" $PY benchmarks/train_throughput.py --config configs/1b.yaml $SEQ \
    train.activation_checkpointing=false train.micro_batch_size=8 train.batch_size=8 --peer-precisions bf16 \
    --out "$OUT/train-1b.json"
fi

# The short version, last, so it is what a truncated terminal shows.
{
    if [ "$PARTS" != bench ]; then
        echo "--- tests"; tail -n 15 "$OUT/pytest.log"
        echo "--- cli"; grep -E "^===|val_loss|tokens/s|tok/s|error|Error" "$OUT/cli.log" | tail -n 25
    fi
    [ "$PARTS" = tests ] || { echo "--- benchmarks"; grep -v "^\.\.\." "$B" | tail -n 60; }
} >>"$OUT/summary.txt" 2>&1
cat "$OUT/summary.txt"
if [ -s "$OUT/.failed" ]; then
    echo "failed: $(paste -sd, "$OUT/.failed")"
    rm -f "$OUT/.failed"
    exit 1
fi
