#!/usr/bin/env bash
# One GPU run of the WKV4 kernel checks: environment facts (driver, NVRTC, PTX ISA, which image
# loaded), the NVRTC/launcher tests, the GPU tests against the float64 oracle, the benchmark.
# Exit 0 only if everything passed. Sized for ~5 minutes on an H100 with torch (CUDA 13), cuda-python and no internet.
#   scripts/gpu_check.sh [OUT_DIR]        (results: OUT_DIR/{pytest-gpu.txt,bench.json,bench.txt})
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-${OUT:-gpu-check-out}}
mkdir -p "$OUT"
if [ -f .venv/bin/activate ]; then . .venv/bin/activate; fi
PY=${PYTHON:-python}
export RWKV_EXPORT_CACHE=${RWKV_EXPORT_CACHE:-$OUT/cache}
status=0

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
$PY - <<'PYEOF' || status=1
import torch
from cuda.bindings import driver
from plugins.nvrtc import compile_ptx, nvrtc_version, ptx_version
from plugins.launcher import _module_for
print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.get_device_name())
print("driver API version", driver.cuDriverGetVersion()[1], "nvrtc", nvrtc_version(), "ptx", ptx_version(compile_ptx("sm_80")))
m = _module_for(torch.cuda.current_device())
print("loaded", m.image_kind, "for", m.arch, "SMs", m.sm_count)
PYEOF

timeout 120 $PY -m pytest -q tests/test_kernels_ptx.py 2>&1 | tail -5 || status=1  # the g++ proof (test_kernels_cpu.py) runs in CPU CI
timeout 200 $PY -m pytest -q -m gpu tests/test_kernels_gpu.py -x 2>&1 | tee "$OUT/pytest-gpu.txt" | tail -30
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1
timeout 180 $PY benchmarks/bench_kernels.py --quick --json "$OUT/bench.json" 2>&1 | tee "$OUT/bench.txt" || status=1
echo "gpu_check: exit $status"
exit $status
