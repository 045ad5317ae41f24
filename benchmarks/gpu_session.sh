#!/usr/bin/env bash
# Every GPU check of the kit in one short session (≤ 8 minutes on one H100: the timeouts add up to 465 s), for hosts lent
# briefly: energy meters (counter vs integrated power vs CodeCarbon), the real-NVML tests, the
# per-method step-time benchmark on CUDA, and `joulebench train` on resnet50 per method.
# Usage: OUT=results-dir benchmarks/gpu_session.sh   (wheels in .whl/ are installed first when
# present: hosts without network get mlflow, codecarbon and torch-pruning that way).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-gpu-session}"
WORK="$(mktemp -d)"  # the store and report; only the few files worth keeping go to $OUT
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 MLFLOW_TRACKING_URI="sqlite:///$WORK/mlflow.db"
if [[ -d .whl ]]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/jb-site .whl/*.whl || exit 1
    export PYTHONPATH="/tmp/jb-site:${PYTHONPATH:-}"
fi
export PYTHONPATH="$PWD/src:${PYTHONPATH:-}"

step() { echo; echo "=== $1 ($(date +%T))"; }

step "host"
nvidia-smi --query-gpu=name,driver_version,power.limit,clocks.max.sm --format=csv
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())"
python3 -m joulebench meters --device cuda

step "energy meters: counter vs integrated power vs CodeCarbon (resnet50, 224 px, bf16)"
timeout 80 python3 benchmarks/gpu_check.py --bf16 --train-seconds 20 --idle-seconds 5

step "tests marked gpu, against the real NVML"
timeout 45 python3 -m pytest -q -m gpu -p no:cacheprovider tests/test_energy_nvml.py

step "per-method step time and NVML-counter energy on CUDA (issue 10: stego ÷ baseline ≤ 0.60)"
timeout 150 python3 benchmarks/methods.py --device cuda --models resnet50:224,vgg16:224,vit_b_16:224 \
    --batch-size 128 --rounds 3 --steps 3

step "joulebench train: resnet50, digits at 224 px, one short epoch per method"
for method in baseline stego prune lowrank; do
    timeout 40 python3 -m joulebench train --model resnet50 --weights none --method "$method" \
        --image-size 224 --batch-size 128 --epochs 1 --limit-train-batches 20 \
        --idle-seconds 3 --inference-batches 10 --device cuda --quiet --run-name "gpu-$method"
done
step "report of those runs"
timeout 30 python3 -m joulebench report --out "$WORK/report" && cat "$WORK/report/summary.md"
cp "$WORK/mlflow.db" "$WORK"/report/summary.* "$OUT"/ 2>/dev/null
step "done"
