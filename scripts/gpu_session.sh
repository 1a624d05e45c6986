#!/usr/bin/env bash
# One lease of a GPU machine (no registry there): install offline, run the CUDA tests and the
# benchmark suite, and leave logs and the results JSON in $OUT. Usage: OUT=dir bash scripts/gpu_session.sh [steps]
# steps: any of "tests bench-kernels tune bench-e2e profile calib" (default: all), each under its own time
# limit; TESTS selects the test paths, E2E_K a pytest -k expression for the end-to-end cases,
# PROFILE_ARGS the arguments of scripts/profile_e2e.py (default: Vim-S, batch 128).
set -u
OUT=${OUT:-/tmp/ptq4vm-gpu}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
steps=${*:-tests bench-kernels tune bench-e2e profile calib}
nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.max.sm,power.limit --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" | tee -a "$OUT/gpu.txt"
python3 -m pip install -q --no-deps --no-build-isolation -e . >"$OUT/install.log" 2>&1 || { cat "$OUT/install.log"; exit 1; }
for step in $steps; do
  start=$SECONDS
  case $step in
    tests) timeout "${TESTS_S:-240}" python3 -m pytest -q -p no:cacheprovider -n 8 ${TESTS:-tests} --maxfail=5 \
             >"$OUT/tests.log" 2>&1 ;;
    bench-kernels) timeout "${KERNELS_S:-540}" python3 -m pytest -q -p no:cacheprovider benchmarks/test_kernels.py \
             >"$OUT/bench-kernels.log" 2>&1 ;;
    tune) timeout "${TUNE_S:-200}" python3 scripts/tune_kernels.py --out "$OUT/tune.json" >"$OUT/tune.log" 2>&1 ;;
    bench-e2e) timeout "${E2E_S:-540}" python3 -m pytest -q -p no:cacheprovider benchmarks/test_end_to_end.py \
             -k "${E2E_K:-}" \
             >"$OUT/bench-e2e.log" 2>&1 ;;
    profile) timeout "${PROFILE_S:-300}" python3 scripts/profile_e2e.py ${PROFILE_ARGS:-} --out "$OUT/profile.json" \
             >"$OUT/profile.log" 2>&1 ;;
    calib) { timeout "${CALIB_S:-540}" sh -c 'python3 scripts/time_calibration.py vim --depth 2 --images 256 \
               --device cuda --threads 8 && python3 scripts/time_calibration.py vim --depth 24 --images 256 \
               --device cuda --threads 8'; } >"$OUT/calib.log" 2>&1 ;;  # Vim-T, 256 images (issue 14)
    *) echo "unknown step $step"; exit 2 ;;
  esac
  echo "== $step: rc=$? in $((SECONDS - start)) s"
  grep -E "^(FAILED|ERROR)|passed|failed|^(scan|gemm|int8_|fp16_|Vim-T)" "$OUT/$step.log" | tail -n 40 2>/dev/null
done
