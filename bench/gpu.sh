#!/usr/bin/env bash
# The GPU tables of bench/README.md in one command: layer_time.py and step_time.py (training and
# inference) in float32 and bfloat16, and fold_rows.py (training and inference) in bfloat16, each
# writing its JSON to OUTPUT_DIR, all output also in OUTPUT_DIR/gpu.log. Runs what is given (a part
# fails: the next still runs; the exit status says whether any failed).
#
#   bash bench/gpu.sh OUTPUT_DIR [REPEATS]      # REPEATS: rounds of step_time.py, default 30
#
# On the project's lent GPU machine (its python3 holds torch; our pins travel as wheels in .whl,
# see "GPU" in bench/README.md) the whole script takes a few minutes.
set -uo pipefail
out=${1:?usage: bash bench/gpu.sh OUTPUT_DIR [REPEATS]}
repeats=${2:-30}
python=${PYTHON:-python3}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
failed=0

run() {
    local name=$1
    shift
    echo "== $name: $*" | tee -a "$out/gpu.log"
    "$python" "$@" --device cuda --output "$out/$name.json" 2>&1 | tee -a "$out/gpu.log" || failed=1
}

for dtype in float32 bfloat16; do
    run "layer_time_cuda_$dtype" bench/layer_time.py --dtype "$dtype"
    run "step_time_cuda_$dtype" bench/step_time.py --dtype "$dtype" --repeats "$repeats"
    run "inference_time_cuda_$dtype" bench/step_time.py --mode inference --dtype "$dtype" --repeats "$repeats"
done
run fold_rows_cuda_bfloat16 bench/fold_rows.py --mode training inference --dtype bfloat16 \
    --shapes 768x768 768x3072 3072x768 4096x4096 --structures circulant toeplitz symmetric_toeplitz kronecker ldr \
    --rows 64 128 256 512 1024 2048 4096 8192 --repeats 40
exit $failed
