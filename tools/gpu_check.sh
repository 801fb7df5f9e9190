#!/usr/bin/env bash
# What issue #25 asks of a lent GPU, in ONE command that ends within 7 minutes on
# an H100 (BUDGET_S=420 from this script's start): the CUDA tests
# (tests/test_devices.py and tests/test_fused.py, capped at 120 s), MSM at the
# paper's size (N=200, L=1369, C=1024) in bfloat16 with the fused kernel and with
# matmul, beside the bfloat16 matmul rate measured in the same run, and the whole
# pipeline (open_clip ViT-L-14-336 at 518 px, N=200, random weights) in the
# target configuration (bfloat16, fused, float16 feature sets), then bfloat16
# matmul; TF32 and float32 only while the budget allows. tools/gpu_check.py does
# the work; its docstring gives the order and the files.
#
# Everything goes to $OUT as it comes (tests.log, msm.log, pipeline.log,
# results.jsonl) and summary.md / summary.json are rewritten after each step, so
# a run cut off keeps what it measured; the summary is printed at the end.
#
#   bash tools/gpu_check.sh [tests] [msm] [pipeline]   # default: all three
#   QUICK=1 DEVICE=cpu bash tools/gpu_check.sh         # small sizes on the CPU: checks the script
#
# open_clip is not on the GPU image and the GPU machine has no network: fetch its
# wheels here first (.whl/ is git-ignored; open_clip_torch and ftfy are pure
# Python, wcwidth is an abi3 wheel for CPython >= 3.10: one set serves 3.10-3.12)
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#       --implementation cp --platform manylinux2014_x86_64 -d .whl open_clip_torch ftfy wcwidth
# and run, in one call of the device tool:
#   run: command "bash tools/gpu_check.sh", carry [".whl"], timeout_s 480
# (If device time is left after it, a shorter second call can redo one stage, e.g.
# command "BUDGET_S=200 bash tools/gpu_check.sh pipeline"; $OUT is emptied per call.)
set -uo pipefail
cd "$(dirname "$0")/.."
export GPU_CHECK_T0=${GPU_CHECK_T0:-$(date +%s.%N)}
export OUT=${OUT:-/tmp/gpu_check}
mkdir -p "$OUT"
site=
if compgen -G ".whl/*.whl" >/dev/null; then  # into a fresh folder: nothing of an earlier install mixes in
    site=$(mktemp -d /tmp/gpu_check_site.XXXXXX)
    trap 'rm -rf "$site"' EXIT
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$site" .whl/*.whl || exit 1
fi
export PYTHONPATH=$PWD${site:+:$site}${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
python3 tools/gpu_check.py "$@"
