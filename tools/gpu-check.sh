#!/usr/bin/env bash
# The GPU check on a machine with an NVIDIA GPU and torch (+ transformers, peft, safetensors,
# tokenizers) and none of this project installed: it runs from this copy of the tree (the
# packages made importable by tools/source-view.py, no install) and a bundle `make gpu-bundle`
# wrote beforehand (Triton, a numpy<2 wheel, the tokenizer).
#   tools/gpu-check.sh [BUNDLE] [--cpu] [other jina-triton gpu-check options]
# Results and logs go to $OUT (default artifacts/gpu-check); the exit code is the check's.
set -euo pipefail
cd "$(dirname "$0")/.."
BUNDLE=${1:-.gpu-bundle}
shift || true
[ -f "$BUNDLE/triton.tar.xz" ] || { echo "gpu-check: no bundle at $BUNDLE: run 'make gpu-bundle' where the project is installed" >&2; exit 2; }
PYTHON=${PYTHON:-}
for candidate in "$PYTHON" /opt/torch/.venv/bin/python "$(command -v python3 || true)"; do
  if [ -n "$candidate" ] && [ -x "$candidate" ] && "$candidate" -c "import torch" 2>/dev/null; then PYTHON=$candidate; break; fi
done
"$PYTHON" -c "import torch" 2>/dev/null || { echo "gpu-check: no Python with torch found (set PYTHON=...)" >&2; exit 2; }
export OUT=${OUT:-artifacts/gpu-check}
mkdir -p "$OUT"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/jina-gpu-check-XXXXXX")   # private (0700), never a fixed shared path
export PYTHONPATH="$("$PYTHON" tools/source-view.py "$WORK/src")"
"$PYTHON" -c "import sys, numpy, torch; print('python', sys.version.split()[0], 'torch', torch.__version__, 'numpy', numpy.__version__, 'cuda', torch.cuda.is_available())" | tee "$OUT/env.txt"
set +e
"$PYTHON" -m jina_triton_tools.gpu_check --bundle "$BUNDLE" --workdir "$WORK" --out "$OUT" "$@" 2>&1 | tee "$OUT/check.log"
code=${PIPESTATUS[0]}
exit "$code"
