#!/usr/bin/env bash
# The prepared GPU check for a lent machine (one H200, torch with CUDA, a CPU-only
# onnxruntime, no network but the package registries), run as ONE short command:
#
#   bash benchmarks/gpu_check.sh [--dry-run] [--install-ort-gpu] [--models-dir DIR]
#                                [--models a,b] [--batch-sizes 1,32,256] [--seconds 4]
#
# What it does, in order (each step says what it skipped and why; nothing fails silently):
#  1. makes `import simx` work from this checkout without pip (a symlink shim: the package
#     maps simx=runtime, simx.export=export) and reports the GPU, torch and onnxruntime;
#  2. checks onnxruntime.get_available_providers() for CUDA/TensorRT *before* installing
#     anything; only with --install-ort-gpu does it try `pip install --target` of
#     onnxruntime-gpu (255 MB) into a side folder put first on PYTHONPATH;
#  3. exports the models that are missing in --models-dir (random weights; fp32, plus fp16
#     when a CUDA provider is there), unless they were exported beforehand and carried;
#  4. runs benchmarks/gpu_check.py under `timeout` (the whole script stays within ~5 min):
#     torch fp32 and fp16 autocast on the GPU, simx CUDA fp32/fp16 and TensorRT fp16 where
#     the providers exist, parity against onnxruntime CPU fp32; JSON to $OUT/gpu_check.json.
#
# --dry-run: the same flow on the CPU (tiny batches, short timings, no installs, no
# exports), so it is tested on machines without a GPU (tests/test_gpu_check.py).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(dirname "$HERE")"
PY="${PYTHON:-python3}"
OUT="${OUT:-$REPO/gpu_check_out}"
DRY=0
INSTALL_ORT_GPU=0
MODELS_DIR="$REPO/onnx_models"
MODELS="dinov2-base,openclip-vit-b-32-laion2b_s34b_b79k"
BATCHES="1,32,256"
SECONDS_PER="4"
LIMIT=300

while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY=1 ;;
    --install-ort-gpu) INSTALL_ORT_GPU=1 ;;
    --models-dir) MODELS_DIR="$2"; shift ;;
    --models) MODELS="$2"; shift ;;
    --batch-sizes) BATCHES="$2"; shift ;;
    --seconds) SECONDS_PER="$2"; shift ;;
    -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
    *) echo "gpu_check: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
if [ "$DRY" = 1 ]; then
  BATCHES="${BATCHES/1,32,256/1,2}"
  SECONDS_PER="0.2"
  LIMIT=540
fi
mkdir -p "$OUT"
say() { echo "gpu_check: $*"; }

# 1. import simx from this checkout
if ! "$PY" -c "import simx, simx.export" 2>/dev/null; then
  SHIM="$(mktemp -d /tmp/simx-shim.XXXXXX)"
  mkdir -p "$SHIM/simx"
  for f in "$REPO"/runtime/*; do ln -s "$f" "$SHIM/simx/$(basename "$f")"; done
  ln -s "$REPO/export" "$SHIM/simx/export"
  export PYTHONPATH="$SHIM${PYTHONPATH:+:$PYTHONPATH}"
  say "simx not installed: importing it from $REPO through $SHIM"
fi
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader \
  | sed 's/^/gpu_check: gpu /' || say "no nvidia-smi"

providers() { "$PY" -c "import onnxruntime as o; print(','.join(o.get_available_providers()))"; }
PROVIDERS="$(providers)"
say "onnxruntime providers: $PROVIDERS"

# 2. onnxruntime-gpu: look first, install only when asked
if [ "$DRY" = 0 ] && [[ "$PROVIDERS" != *CUDAExecutionProvider* ]]; then
  if [ "$INSTALL_ORT_GPU" = 1 ]; then
    SIDE="$(mktemp -d /tmp/ort-gpu.XXXXXX)"
    if timeout 150 "$PY" -m pip install -q --no-deps --target "$SIDE" onnxruntime-gpu; then
      export PYTHONPATH="$SIDE:$PYTHONPATH"
      PROVIDERS="$(providers)"
      say "installed onnxruntime-gpu into $SIDE; providers now: $PROVIDERS"
    else
      say "skipped onnxruntime-gpu: pip install failed or timed out (CUDA/TensorRT paths will be skipped)"
    fi
  else
    say "onnxruntime-gpu absent and --install-ort-gpu not given: simx CUDA/TensorRT paths will be skipped"
  fi
fi

# 3. exports that are missing (never in a dry run: the dry run uses what it is given)
if [ "$DRY" = 0 ]; then
  mkdir -p "$MODELS_DIR"
  IFS=',' read -ra IDS <<< "$MODELS"
  for id in "${IDS[@]}"; do
    want=(fp32)
    [[ "$PROVIDERS" == *CUDAExecutionProvider* ]] && want+=(fp16)
    for p in "${want[@]}"; do
      suffix=""; [ "$p" = fp32 ] || suffix="-$p"
      [ -f "$MODELS_DIR/$id$suffix.onnx" ] && continue
      say "exporting $id ($p, random weights) into $MODELS_DIR"
      case "$id" in
        dinov2-*) args=(dinov2 --variant "${id#dinov2-}") ;;
        openclip-vit-b-32-*) args=(openclip --model ViT-B-32 --pretrained "${id#openclip-vit-b-32-}") ;;
        *) say "skipped export of $id: add its export line to gpu_check.sh"; continue ;;
      esac
      timeout 240 "$PY" -m simx.cli export "${args[@]}" --weights random --precision "$p" \
        --output-dir "$MODELS_DIR" >/dev/null || say "skipped $id $p: export failed"
    done
  done
fi

# 4. the measurements
DRYFLAG=(); [ "$DRY" = 1 ] && DRYFLAG=(--dry-run)
timeout "$LIMIT" "$PY" "$HERE/gpu_check.py" "${DRYFLAG[@]}" --models "$MODELS" \
  --models-dir "$MODELS_DIR" --batch-sizes "$BATCHES" --seconds "$SECONDS_PER" \
  --out "$OUT/gpu_check.json"
