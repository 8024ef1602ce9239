#!/usr/bin/env bash
# The GPU check on a machine with an NVIDIA GPU and torch (+ transformers, peft, safetensors,
# tokenizers) but none of this project's environment: everything else comes from the bundle
# `make gpu-bundle` wrote beforehand (Triton, a numpy<2 wheel, the tokenizer) and the sources.
#   serving/gpu-check.sh [BUNDLE] [--cpu] [other jina-triton gpu-check options]
# Results and logs go to $OUT (default artifacts/gpu-check).
set -euo pipefail
cd "$(dirname "$0")/.."
BUNDLE=${1:-.gpu-bundle}
shift || true
PYTHON=${PYTHON:-$(command -v python3)}
for candidate in /opt/torch/.venv/bin/python "$PYTHON"; do
  if [ -x "$candidate" ] && "$candidate" -c "import torch" 2>/dev/null; then PYTHON=$candidate; break; fi
done
export PYTHONPATH="$PWD/client:$PWD/build:$PWD/serving:$PWD/model_repository${PYTHONPATH:+:$PYTHONPATH}"
export OUT=${OUT:-artifacts/gpu-check}
mkdir -p "$OUT"
"$PYTHON" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())" | tee "$OUT/env.txt"
"$PYTHON" -m jina_triton_serving.gpu_check --bundle "$BUNDLE" --out "$OUT" "$@" 2>&1 | tee "$OUT/check.log"
