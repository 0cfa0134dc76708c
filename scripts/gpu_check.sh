#!/usr/bin/env bash
# One GPU run of the kernel checks (every op of the registry: WKV4, and WKV5/6/7 of plugins/wkv_heads.cu): environment facts
# (driver, NVRTC, PTX ISA, which image loaded), the GPU tests against the float64 oracle (kernels
# alone and inside the tiny trained models), the benchmarks (kernels; whole 169M-like models). The NVRTC/PTX tests and the g++ proofs run in CPU CI (tests/kernels/test_kernels_ptx.py, test_kernels_launcher.py, test_kernels_cpu.py).
# Exit 0 only if everything passed. Sized for ~5 minutes on an H100 with torch (CUDA 13), cuda-python and no internet.
#   scripts/gpu_check.sh [OUT_DIR]   (results: OUT_DIR/{pytest-gpu.txt,bench*.json,bench*.txt})
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
from rwkv_export.kernels.nvrtc import compile_ptx, nvrtc_version, ptx_version
from rwkv_export.kernels.cuda_driver import module_for
from rwkv_export.kernels.nvrtc import UNITS
print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.get_device_name())
print("driver API version", driver.cuDriverGetVersion()[1], "nvrtc", nvrtc_version(), "ptx", ptx_version(compile_ptx("sm_80")))
for unit in UNITS:
    m = module_for(torch.cuda.current_device(), unit)
    print(unit, "loaded", m.image_kind, "for", m.arch, "SMs", m.sm_count)
PYEOF

timeout 240 $PY -m pytest -q -rs -s -m gpu tests/kernels/test_kernels_gpu.py tests/kernels/test_model_kernels.py 2>&1 | tee "$OUT/pytest-gpu.txt" | tail -30
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1
grep -o "WKV[567] f[0-9]* B=[^:]*: y [0-9.e+-]* state [0-9.e+-]*" "$OUT/pytest-gpu.txt"
grep -o "MODEL [^:]*: .*e[-+][0-9]*" "$OUT/pytest-gpu.txt"
timeout 300 $PY benchmarks/bench_kernels.py --quick --json "$OUT/bench.json" > "$OUT/bench.txt" 2>&1 || status=1
cat "$OUT/bench.txt"
timeout 200 $PY benchmarks/bench_model_gpu.py --json "$OUT/bench-model.json" > "$OUT/bench-model.txt" 2>&1 || status=1
cat "$OUT/bench-model.txt"
echo "gpu_check: exit $status"
exit $status
