#!/usr/bin/env bash
# The serving benchmark on a GPU host without Java, TorchServe or network: fused against stock, fp16, a
# bert-base-shaped checkpoint with random weights (seed 0; generated here once per pass, the same for both
# archives), tokenizer from the bundle, concurrency 1, 16, 64.
#
#   scripts/device_serving.sh [OUT_DIR] [--gpus 2] [--mps] [more benchmarks.serving flags]
#
# Run from the repo root after building the extension (python -m pip install --no-build-isolation --no-deps
# -e .), with .device/serving/ from scripts/device_bundle.sh carried along. OUT_DIR defaults to $OUT.
# Copies the result JSON and PNG (and TorchServe's logs on failure) into OUT_DIR.
#
# --mps: NVIDIA's Multi-Process Service for the run. Its control daemon starts before anything touches the
# GPU (pipes and logs in /tmp/fusedbert-mps, which the unpacking leaves alone) and quits on exit, so that
# TorchServe's workers on one GPU run their kernels side by side instead of time-sliced. The GPU's compute
# mode is left as it is.
#
# --gpus 2: two passes, each building its archives and starting its own TorchServe: one worker on GPU 0,
# then one worker per GPU on GPUs 0 and 1 (model-config deviceIds [0, 1]; the handler takes cuda:{gpu_id}
# from TorchServe), and prints requests/s on 1 GPU against 2 GPUs per system and concurrency.
#
# Time: unpacking ~15 s; per pass ~1.5-2 min to generate the checkpoint, trace and archive both systems and
# load them, then 9 cells (fused, stock and the model-less noop x 3 concurrencies; noop's finish in seconds)
# of at most DURATION_CAP seconds each, each after its warm-up (2 s or more: --warmup-seconds).
# REQUESTS is high enough that c=16 and c=64 usually finish by count and c=1 stops at the cap. Defaults keep
# one GPU under ~4 min and --gpus 2 (two passes) under ~6.5 min; override with REQUESTS= / DURATION_CAP=.
# SERVING_DEVICE=cpu (fp32, one CPU worker) runs the same steps on a host without a GPU: a check of this
# script and the bundle, not a measurement.
set -euo pipefail

OUT_DIR=${OUT:-}
if [ $# -gt 0 ] && [ "${1#--}" = "$1" ]; then
    OUT_DIR=$1
    shift
fi
[ -n "$OUT_DIR" ] || { echo "usage: scripts/device_serving.sh OUT_DIR [--gpus N] [--mps] [benchmarks.serving flags] (or set OUT)" >&2; exit 2; }
GPUS=1
MPS=0
EXTRA=()
while [ $# -gt 0 ]; do
    case "$1" in
        --gpus) GPUS=$2; shift 2 ;;
        --gpus=*) GPUS=${1#--gpus=}; shift ;;
        --mps) MPS=1; shift ;;
        *) EXTRA+=("$1"); shift ;;
    esac
done
if [ "$GPUS" -gt 1 ]; then
    REQUESTS=${REQUESTS:-3000}
    DURATION_CAP=${DURATION_CAP:-8}
else
    REQUESTS=${REQUESTS:-4000}
    DURATION_CAP=${DURATION_CAP:-12}
fi
DEVICE=${SERVING_DEVICE:-cuda}
DTYPE=fp16
[ "$DEVICE" = cpu ] && DTYPE=fp32
[ -f scripts/device_unpack.sh ] && [ -d benchmarks ] || { echo "device_serving: run from the repo root" >&2; exit 2; }
mkdir -p "$OUT_DIR"
OUT_DIR=$(cd "$OUT_DIR" && pwd)
started=$(date +%s)

if [ "$MPS" = 1 ]; then
    command -v nvidia-cuda-mps-control >/dev/null || { echo "device_serving: --mps, but nvidia-cuda-mps-control is not on PATH" >&2; exit 1; }
    export CUDA_MPS_PIPE_DIRECTORY=/tmp/fusedbert-mps/pipe CUDA_MPS_LOG_DIRECTORY=/tmp/fusedbert-mps/log
    mkdir -p "$CUDA_MPS_PIPE_DIRECTORY" "$CUDA_MPS_LOG_DIRECTORY"
    nvidia-cuda-mps-control -d || { echo "device_serving: the MPS control daemon did not start" >&2; exit 1; }
    trap 'echo quit | nvidia-cuda-mps-control' EXIT
    echo "== MPS control daemon started (pipes in $CUDA_MPS_PIPE_DIRECTORY)"
fi

echo "== unpacking the bundle"
# shellcheck source=scripts/device_unpack.sh
source scripts/device_unpack.sh /tmp/fusedbert-serving
echo "== $(python -c 'import torch; print("torch", torch.__version__, "CUDA", torch.version.cuda, "GPUs", torch.cuda.device_count())')"
python -c "import fusedbert.library as l; print('fusedbert op library:', l.library_path())" \
    || { echo "device_serving: fusedbert's op is not built: python -m pip install --no-build-isolation --no-deps -e ." >&2; exit 1; }
visible=$(python -c "import torch; print(torch.cuda.device_count())")
[ "$DEVICE" = cpu ] || [ "$visible" -ge "$GPUS" ] || { echo "device_serving: --gpus $GPUS but torch sees $visible GPU(s)" >&2; exit 1; }

passes=(1)
[ "$GPUS" -gt 1 ] && passes=(1 "$GPUS")
for gpus in "${passes[@]}"; do
    echo "== serving benchmark: $gpus GPU(s), $REQUESTS requests or $DURATION_CAP s per cell"
    work=/tmp/fusedbert-serving/work-x$gpus
    gpu_flags=(--gpus "$gpus")
    [ "$DEVICE" = cpu ] && gpu_flags=()
    if ! python -m benchmarks.serving --device "$DEVICE" "${gpu_flags[@]}" --dtype "$DTYPE" --random-weights bert-base \
            --concurrency 1 16 64 --requests "$REQUESTS" --duration-cap "$DURATION_CAP" \
            --work-dir "$work" --out-dir "$OUT_DIR/x$gpus" "${EXTRA[@]}"; then
        mkdir -p "$OUT_DIR/logs-x$gpus"
        cp -r "$work/torchserve/logs/." "$OUT_DIR/logs-x$gpus/" 2>/dev/null || true
        echo "device_serving: the benchmark failed on $gpus GPU(s); TorchServe's logs are in $OUT_DIR/logs-x$gpus" >&2
        exit 1
    fi
done

if [ "$GPUS" -gt 1 ]; then
    python - "$OUT_DIR" "$GPUS" <<'EOF'
import json, sys
from pathlib import Path
out, gpus = Path(sys.argv[1]), int(sys.argv[2])
def rates(folder):
    result = json.loads(next((out / folder).glob("serving-*.json")).read_text())
    return {(r["system"], r["concurrency"]): r["requests_per_s"] for r in result["records"]}
one, many = rates("x1"), rates(f"x{gpus}")
summary = []
print(f"requests/s: 1 GPU -> {gpus} GPUs")
for key in sorted(one):
    if key in many:
        summary.append({"system": key[0], "concurrency": key[1], "requests_per_s_1_gpu": one[key],
                        f"requests_per_s_{gpus}_gpus": many[key], "scaling": many[key] / one[key]})
        print(f"  {key[0]:<6} c={key[1]:<3} {one[key]:8.1f} -> {many[key]:8.1f}  ({many[key] / one[key]:.2f}x)")
(out / "scaling.json").write_text(json.dumps(summary, indent=2) + "\n")
EOF
fi
echo "== done in $(( $(date +%s) - started )) s; results in $OUT_DIR:"
find "$OUT_DIR" -maxdepth 2 -type f \( -name '*.json' -o -name '*.png' \) | sort
