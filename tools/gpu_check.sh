#!/usr/bin/env bash
# Everything issue #4 asks of a GPU, in one command: the test suite on CUDA
# (tests/test_devices.py checks the CUDA paths against float64 references), MSM
# against the reference's structure at the paper's size in each precision, and
# the whole pipeline (open_clip ViT-L-14-336 at 518 px, N = 200, random
# weights: the time does not depend on them) with the baseline in the same run;
# MSM both as torch products ("matmul") and as the fused Triton kernel ("fused").
# Logs and JSON lines go to $OUT (the device tool brings that folder back).
#
#   bash tools/gpu_check.sh [tests] [msm] [pipeline]   # default: all three
#   QUICK=1 DEVICE=cpu bash tools/gpu_check.sh         # small sizes: checks the script itself
#
# open_clip is not on the GPU image and the GPU machine has no network: fetch
# its wheels here first (.whl/ is git-ignored) and carry them with the call:
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#       --implementation cp --platform manylinux2014_x86_64 -d .whl open_clip_torch ftfy wcwidth
#   device run: command "bash tools/gpu_check.sh tests msm", carry [".whl"]
#   device run: command "bash tools/gpu_check.sh pipeline", carry [".whl"]
# Two calls, because one call may run 10 minutes: the pipeline stage makes 200
# synthetic 518 px images per precision (about 40 s of CPU each) and times the
# reference's structure (float32, about 1.8 PFLOP) once, beside bfloat16.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu_check}
DEVICE=${DEVICE:-cuda}
mkdir -p "$OUT"
stages=${*:-tests msm pipeline}
if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
status=0

{
    date -u
    command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
    python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.is_available())"
} 2>&1 | tee "$OUT/machine.txt"

if [[ $stages == *tests* ]]; then
    python3 -m pytest -q -p no:cacheprovider 2>&1 | tee "$OUT/tests.log" || status=1
fi

if [[ $stages == *msm* ]]; then
    if [[ -n ${QUICK:-} ]]; then size=(--n 24 --patches 64 --dim 128); else size=(--n 200 --patches 1369 --dim 1024); fi
    for precision in bfloat16 tf32 float32; do
        for algorithm in fused matmul; do
            # reduced precisions and the Triton kernel are CUDA's
            [[ $DEVICE == cpu && ($precision != float32 || $algorithm == fused) ]] && continue
            python3 benchmarks/bench_msm.py "${size[@]}" --device "$DEVICE" --matmul-precision "$precision" \
                --algorithm "$algorithm" --repeat 3 2>&1 | tee -a "$OUT/msm.log" || status=1
        done
    done
fi

if [[ $stages == *pipeline* ]]; then
    if [[ -n ${QUICK:-} ]]; then
        model=(--sizes 12 --backbone timm:vit_small_patch14_dinov2 --image-size 112)
    else
        model=(--sizes 200 --backbone open_clip:ViT-L-14-336 --image-size 518)
    fi
    # the target first (bfloat16, fused, float16 feature sets, with the baseline), then
    # what it is compared with
    for run in "bfloat16 fused float16 --baseline" "bfloat16 matmul float32" "tf32 fused float16" \
        "float32 matmul float32"; do
        read -r precision algorithm storage baseline <<<"$run"
        if [[ $DEVICE == cpu ]]; then
            [[ $precision != float32 ]] && continue
            baseline=--baseline
        fi
        python3 benchmarks/bench_pipeline.py "${model[@]}" --pretrained none --device "$DEVICE" \
            --matmul-precision "$precision" --algorithm "$algorithm" --features-dtype "$storage" $baseline \
            --json "$OUT/pipeline.jsonl" 2>&1 | tee -a "$OUT/pipeline.log" || status=1
    done
fi
exit $status
