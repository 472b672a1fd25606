#!/usr/bin/env bash
# The GPU check: what spherear has run only on a CPU, run on this machine's CUDA devices, one
# PASS/FAIL line per check (details in $LOGS). From the repository root or anywhere:
#
#     bash benchmarks/gpu_check.sh          # QUICK=1: the speed part on the tiny model
#
# 1. the tests of the scaled paths, with train-ar on CUDA: bf16 training + exact resume,
#    a run resumed under torch.compile against eager, the compiled head step against eager
#    sampling, gradient checkpointing, bf16-held sampling weights;
# 2. FSDP (torch's fully_shard): 2 processes train, are killed, resume exactly, and the
#    export loads in one process; over NCCL on 2 GPUs when there are 2, else over gloo on
#    the CPU (said so in the line);
# 3. benchmarks/gpu_check.py: B training under bf16 autocast (tokens/s, MFU, peak memory)
#    and B sampling in bf16 at batch 256, eager, compiled, and with CUDA graphs (images/s,
#    distance to eager, peak memory).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
LOGS=${LOGS:-$(mktemp -d /tmp/gpu_check.XXXXXX)}
failed=0

check() {  # check NAME LOG COMMAND...: one line, the command's output in $LOGS/LOG
    local name=$1 log=$2
    shift 2
    if timeout 900 "$@" >"$LOGS/$log" 2>&1; then
        echo "PASS $name"
    else
        echo "FAIL $name (see $LOGS/$log)"
        failed=1
    fi
}

gpus=$("$PY" -c "import torch; print(torch.cuda.device_count())" 2>/dev/null || echo 0)
if [ "$gpus" -lt 1 ]; then
    echo "FAIL cuda: no CUDA device visible to $PY (torch.cuda.device_count() = $gpus)"
    failed=1
fi
echo "gpu_check: $gpus CUDA device(s); logs in $LOGS"

pytest=("$PY" -m pytest -x -q -p no:cacheprovider)
check "bf16 train-ar + kill + exact resume; compile resume vs eager (train-ar on cuda)" \
    train.log "${pytest[@]}" tests/train/test_precision_compile.py
check "compiled head step vs eager; gradient checkpointing; bf16-held sampling weights" \
    units.log "${pytest[@]}" tests/models/test_token_sampler.py tests/test_precision.py \
    tests/models/test_ar.py -k "compiled or checkpointing or bf16"
if [ "$gpus" -ge 2 ]; then
    check "FSDP, 2 processes over NCCL: train, kill, exact resume, export loads in one" \
        fsdp.log "${pytest[@]}" tests/train/test_fsdp.py
else
    check "FSDP, 2 processes over gloo on the CPU (fewer than 2 GPUs here)" \
        fsdp.log env CUDA_VISIBLE_DEVICES= "${pytest[@]}" tests/train/test_fsdp.py
fi

quick=()
[ "${QUICK:-0}" = 1 ] && quick=(--quick)
if (cd benchmarks && timeout 600 "../$PY" gpu_check.py "${quick[@]}") >"$LOGS/speed.log" 2>&1; then
    grep -E '^(PASS|FAIL) ' "$LOGS/speed.log" || { echo "FAIL speed: no verdicts"; failed=1; }
    grep -q '^FAIL ' "$LOGS/speed.log" && failed=1
else
    echo "FAIL speed: benchmarks/gpu_check.py stopped (see $LOGS/speed.log)"
    failed=1
fi
echo "gpu_check: $([ $failed = 0 ] && echo "all passed" || echo "some checks failed")"
exit $failed
