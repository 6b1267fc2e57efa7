#!/usr/bin/env bash
# The GPU checks of the scale targets (docs/benchmarks.md, "Scale targets at a glance") in one
# run, most important first: one training epoch of 80 000 images at box 128 with the default
# architecture (target 6; paper Table 6), the CUDA-parametrized tests (bf16 autocast, pinned
# memory, the kernels on CUDA), the encode benchmark, the cost of self-distillation, training
# memory, and two-process training over NCCL when the machine has two GPUs (target 7).
#
#   OUT=/tmp/gpu benchmarks/gpu_checks.sh                      # a CUDA machine: ≤ 9 minutes
#                                     (the steps' limits add up to 540 s)
#   OUT=/tmp/gpu DEVICE=cpu SMALL=1 benchmarks/gpu_checks.sh   # the same steps, tiny, on a CPU
#
# Run from the repository root; cryonoo is imported from it (no install needed). mrcfile, which
# a bare PyTorch image may lack, is installed from the wheels in .whl/ when that folder exists.
# Every step has its own time limit and log ($OUT/NAME.log); a failing step does not stop the
# others; $OUT/summary.md lists each step's exit status and seconds, and the benchmarks' JSON
# results are copied to $OUT.
set -u
OUT=${OUT:-gpu_checks}
DEVICE=${DEVICE:-cuda}
SMALL=${SMALL:-0}
PY=${PYTHON:-python3}
WORK=${WORK:-$(mktemp -d)}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if [ -d .whl ]; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --target "$WORK/site" .whl/*.whl &&
        export PYTHONPATH="$PYTHONPATH:$WORK/site"
fi

if [ "$SMALL" = 1 ]; then  # sizes for a quick run of every step
    BOX=32 N_EPOCH=512 N_SSL=256 N_ENCODE=2048 DIM=64 BATCHES=8,16
else
    BOX=128 N_EPOCH=80000 N_SSL=2000 N_ENCODE=100000 DIM=1024 BATCHES=8,64
fi
PRECISION=bf16
[ "$DEVICE" = cpu ] && PRECISION=fp32

echo "| step | exit status | seconds |" >"$OUT/summary.md"
echo "| --- | --- | --- |" >>"$OUT/summary.md"

# step NAME LIMIT_S COMMAND…: run COMMAND with a time limit, log it, record its status
step() {
    local name=$1 limit=$2 start=$SECONDS rc
    shift 2
    echo "== $name (limit ${limit} s)"
    timeout --kill-after=10 "$limit" "$@" >"$OUT/$name.log" 2>&1
    rc=$?
    echo "| $name | $rc | $((SECONDS - start)) |" >>"$OUT/summary.md"
    tail -n 20 "$OUT/$name.log"
}

environment() {
    command -v nvidia-smi >/dev/null && nvidia-smi
    "$PY" -c "import torch, cryonoo; print('torch', torch.__version__, 'cuda',
torch.version.cuda, 'available', torch.cuda.is_available()); print('cryonoo', cryonoo.__version__)
if torch.cuda.is_available(): print(torch.cuda.get_device_name(), torch.cuda.get_device_properties(0))"
}

nccl_two_processes() {
    local gpus
    gpus=$("$PY" -c "import torch; print(torch.cuda.device_count())")
    if [ "$DEVICE" != cuda ] || [ "$gpus" -lt 2 ]; then
        echo "not run: $gpus GPU(s); NCCL needs one GPU per process (two processes, two GPUs)"
        return 0
    fi
    "$PY" -m torch.distributed.run --standalone --nproc_per_node=2 -m cryonoo.cli train \
        "$WORK/epoch/data/particles.mrcs" --poses "$WORK/epoch/data/poses.pkl" \
        --ctf "$WORK/epoch/data/ctf.pkl" -o "$WORK/ddp2" --recipe cryodrgn --epochs 1 \
        --device cuda --precision "$PRECISION" &&
        grep -h '"world_size"\|images_per_s' "$WORK/ddp2/config.json" "$WORK/ddp2/stats.jsonl"
}

export -f environment nccl_two_processes
export PY DEVICE WORK PRECISION
step environment 30 bash -c environment
step epoch 200 "$PY" benchmarks/train_epoch.py -o "$WORK/epoch" --box "$BOX" \
    --n-images "$N_EPOCH" --epochs 1 --device "$DEVICE" --precision "$PRECISION" \
    $([ "$SMALL" = 1 ] && echo --dim "$DIM")
cp "$WORK/epoch/train_epoch.json" "$OUT/epoch.json" 2>/dev/null
step cuda_tests 100 "$PY" -m pytest -q -p no:cacheprovider tests/unit tests/integration -k cuda
step encode 80 "$PY" -m cryonoo.cli bench encode -o "$WORK/encode" -n "$N_ENCODE" -D "$BOX" \
    --device "$DEVICE" --precision "$PRECISION" --no-breakdown \
    $([ "$SMALL" = 1 ] && echo --enc-dim "$DIM")
cp "$WORK"/encode/*.json "$OUT/" 2>/dev/null
step ssl_overhead 60 "$PY" benchmarks/ssl_overhead.py -o "$WORK/ssl" --box "$BOX" \
    --n-images "$N_SSL" --epochs 3 --dim "$DIM" --device "$DEVICE" --precision "$PRECISION" \
    --recipes cryonoo,expander-128
cp "$WORK/ssl/overhead.json" "$OUT/" 2>/dev/null
step memory 50 "$PY" benchmarks/memory.py -o "$WORK/memory" --box "$BOX" --dim "$DIM" \
    --batches "$BATCHES" --device "$DEVICE" --precision "$PRECISION" --steps 2 --train-only
cp "$WORK"/memory/*.json "$OUT/" 2>/dev/null
step nccl 20 bash -c nccl_two_processes
cat "$OUT/summary.md"
