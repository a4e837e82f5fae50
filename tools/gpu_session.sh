#!/usr/bin/env bash
# Every GPU check lowvram owes, as one device call of at most 9 minutes (timeout_s 560).
#
# Prepare here, once per session (the device machine reaches no registry; its image has torch, transformers,
# peft, accelerate, safetensors, rich, pillow and pytest, not the rest):
#   bash tools/gpu_session.sh --fetch        # wheels for the device's Python 3.12 into .whl/ (git-ignored, ~50 MB)
# Then one device call, carrying .whl, with this checkout's commit written out (the device's copy of the tree has no
# .git, so the results could not name it otherwise):
#   LOWVRAM_COMMIT=<git rev-parse HEAD, here> OUT=$OUT bash tools/gpu_session.sh       # results under $OUT
#
# In order, each bounded so the whole fits the call:
#   1. nvidia-smi and the library versions                            -> $OUT/environment.txt
#   2. pytest -m "gpu and not slow": every stored format's kernels at full-width layer shapes, fp16's grad
#      scaler, the optimizers, offload, train --auto under a cap (at most 90 s) -> $OUT/gpu-tests.txt
#   3. tools/bench_gpu_proof.py: SD1.5 512 and SDXL 1024, every planner strategy at batch 1 and 4 and the usual
#      way (one process per model), then train --auto per cap and the T4 way, side by side; the result is also
#      written under benchmarks/gpu/ and calibration.json derived from it before the --auto runs
#                                                                      -> $OUT/gpu-proof.json, calibration.json
#   4. the README tables                                               -> $OUT/gpu-proof.md
#   5. with the time left, the captioner's peak VRAM (tools/bench_captioner.py) -> $OUT/captioner.json
# Then, here: copy gpu-proof.json to the benchmarks/gpu/ path its command names, run
# python tools/calibrate_planner.py, and commit both.
set -uo pipefail
cd "$(dirname "$0")/.."

WHEELS=(diffusers==0.42.1 bitsandbytes==0.50.2 optimum-quanto==0.2.7 peft==0.21.2 tomli-w==1.2.0 prodigyopt==1.1.2
        schedulefree==1.4.1 importlib-metadata==8.7.0)

if [[ "${1:-}" == "--fetch" ]]; then
  platforms=()
  for tag in manylinux_2_28 manylinux_2_27 manylinux_2_24 manylinux_2_17 manylinux2014 manylinux1; do
    platforms+=(--platform "${tag}_x86_64")
  done
  exec python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    "${platforms[@]}" --platform any -d .whl "${WHEELS[@]}"
fi

OUT=${OUT:-/tmp/lowvram-gpu}
BUDGET=${BUDGET:-520}  # seconds for everything below
mkdir -p "$OUT"
start=$SECONDS
warning=""  # in environment.txt: $OUT brings back at most 8 files, and the 8 below are all needed
if [[ -z "${LOWVRAM_COMMIT:-}" && ! -e .git ]]; then
  warning="warning: no LOWVRAM_COMMIT and no .git here: the results name no commit (run it as \
LOWVRAM_COMMIT=\$(git rev-parse HEAD) from the checkout)"
  echo "$warning" >&2
fi
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "installing the carried wheels failed" >&2; exit 1; }
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
# without them nothing below measures anything: say so at once rather than after the whole call
python3 -c "import diffusers, peft, bitsandbytes, optimum.quanto" \
  || { echo "the libraries above do not import: was .whl carried (bash tools/gpu_session.sh --fetch first)?" >&2
       exit 1; }

{ echo "$warning"; nvidia-smi; python3 -c "import json, sys; sys.path.insert(0, 'tools'); import bench_memory; \
print(json.dumps(bench_memory.environment(), indent=2))"; } > "$OUT/environment.txt" 2>&1

# optimum-quanto compiles its CUDA kernels (nvcc, 8 sources) on first use: built in the background from the start,
# rather than inside a test's 60 s or a sweep strategy's limit. A build cut off (timeout's 124) leaves torch's build
# lock, which every later process waits on without end: removed then, and only then (a process that holds it
# removes it itself, and fails if it is gone)
( timeout 150 python3 -c "import optimum.quanto; from optimum.quanto.library.extensions import get_extension; \
get_extension('quanto_cuda').lib"; status=$?; echo "exit $status after $(( SECONDS - start )) s"
  quanto=$(python3 -c "import importlib.util as u; print(u.find_spec('optimum.quanto').submodule_search_locations[0])" \
           2> /dev/null)
  if (( status == 124 )) && [[ -n "$quanto" ]]; then rm -f "$quanto/library/extensions/cuda/build/lock"; fi
) > /tmp/quanto-build.txt 2>&1 &

per_test=()  # pytest-timeout is in the device's image; without it one hung test still ends at the outer 90 s
python3 -c "import pytest_timeout" 2> /dev/null && per_test=(--timeout 60)
rm -f /tmp/gpu-test-failures.txt
# -v names each test as it starts, so a cut-off run shows which one it was in; failures are logged as they happen
LOWVRAM_TEST_LOG=/tmp/gpu-test-failures.txt timeout 90 python3 -m pytest -v -m "gpu and not slow" \
  -p no:cacheprovider -o addopts="" "${per_test[@]}" tests/test_kernel_contracts.py tests/test_gpu.py \
  tests/test_memory.py > "$OUT/gpu-tests.txt" 2>&1
echo "gpu tests: $(tail -1 "$OUT/gpu-tests.txt")"
{ echo; echo "failures, as they happened:"; cat /tmp/gpu-test-failures.txt 2> /dev/null; } >> "$OUT/gpu-tests.txt"

left=$(( BUDGET - (SECONDS - start) - 60 ))  # room for the runs past the deadline and for rendering
device=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1 | tr 'A-Z ' 'a-z-' | sed 's/nvidia-//')
target="benchmarks/gpu/$(date +%F)-${device:-gpu}/gpu-proof.json"
# PROOF_ARGS: extra options, e.g. a CPU rehearsal: PROOF_ARGS="--families tiny --device cpu --budgets 0"
python3 tools/bench_gpu_proof.py --deadline "$(( left > 60 ? left : 60 ))" --calibrate "$target" \
  --work /tmp/lowvram-proof --out "$OUT/gpu-proof.json" ${PROOF_ARGS:-} > "$OUT/gpu-proof.log" 2>&1
tail -1 "$OUT/gpu-proof.log"
cp lowvram/plan/calibration.json "$OUT/calibration.json"
python3 tools/render_benchmarks.py "$OUT/gpu-proof.json" --markdown "$OUT/gpu-proof.md" && cat "$OUT/gpu-proof.md"
left=$(( BUDGET - (SECONDS - start) ))
if (( left >= 40 )); then
  timeout "$left" python3 tools/bench_captioner.py --out "$OUT/captioner.json" > "$OUT/captioner.log" 2>&1
  echo "captioner: $(grep -c peak_reserved "$OUT/captioner.json" 2>/dev/null || echo 0) batch size(s) measured"
fi
{ echo; echo "optimum-quanto's CUDA build:"; tail -20 /tmp/quanto-build.txt; } >> "$OUT/environment.txt"
echo "done in $(( SECONDS - start )) s; commit $OUT/gpu-proof.json as $target"
