#!/usr/bin/env bash
# The book's GPU measurements and checks, in one run on a machine with a CUDA GPU.
#
#   tools/gpu_numbers.sh OUT [LDNET_CLONE [PART...]]
#
# Writes into OUT: the GPU tests' log (make test-gpu, plus the timm bit-equality
# test), bench.json of the attention layers on CUDA, one bench.json per LDNet
# training step (the full network at batch 16, 224x224: float32, fp16 and bf16
# autocast, each with its time and peak memory), and with LDNET_CLONE (your
# clone of github.com/ReaFly/LDNet) LDNet's own network beside LDNet.full(),
# on the GPU and on two CPU threads. Every step has a time limit; a failed step
# is reported and the next one runs. PYTHON picks the interpreter (python3);
# PACK=FILE.tar.gz packs OUT after every step, so a run cut short keeps its results.
# PARTS (default: all, the most wanted first): step-float32 step-fp16 against tests timm
# step-bf16 layers.
set -u
out=${1:?usage: tools/gpu_numbers.sh OUT [LDNET_CLONE [PART...]]}
clone=${2:-}
shift $(( $# < 2 ? $# : 2 ))
parts=("$@")
[ ${#parts[@]} -eq 0 ] && parts=(step-float32 step-fp16 against tests timm step-bf16 layers)
py=${PYTHON:-python3}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 MPLBACKEND=Agg

step() {  # step NAME SECONDS COMMAND...: run it, keep its output in OUT/NAME.log
    local name=$1 limit=$2
    shift 2
    local start=$SECONDS
    timeout "$limit" "$@" >"$out/$name.log" 2>&1
    local rc=$?
    echo "== $name: exit $rc after $((SECONDS - start)) s; $(tail -n 1 "$out/$name.log")"
    if [ -n "${PACK:-}" ]; then tar -czf "$PACK" -C "$(dirname "$out")" "$(basename "$out")"; fi
}

ldnet_step() {  # ldnet_step PRECISION: the full network's training step, literal and folded ESA
    local flag=()
    [ "$1" != float32 ] && flag=(--amp "$1")
    step "step-$1" 150 $py -m esa_tutorial.bench --device cuda --shape 16 64 56 56 \
        --variants esa_folded --repeats 1 --ldnet-step --model full --ldnet-steps 5 "${flag[@]}" \
        --out "$out/step-$1"
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
$py -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())"
for part in "${parts[@]}"; do
    case $part in
        step-*) ldnet_step "${part#step-}" ;;
        against)
            if [ -z "$clone" ]; then echo "== against: skipped (no LDNET_CLONE given)"; continue; fi
            step against-cuda 90 $py -m esa_tutorial.bench --against-ldnet "$clone" --device cuda \
                --out "$out/against-cuda"
            OMP_NUM_THREADS=2 step against-cpu 150 taskset -c 0,1 $py -m esa_tutorial.bench \
                --against-ldnet "$clone" --device cpu --repeats 7 --min-run-time 1 \
                --out "$out/against-cpu" ;;
        tests) step tests 200 $py -m pytest tests/gpu tests/test_train.py -m gpu -rs -q ;;
        timm) step timm 90 $py -m pytest -q -rs \
            "tests/test_ldnet_full.py::test_res2net_equals_timm_res2net50d_bit_for_bit" ;;
        layers) step layers 200 $py -m esa_tutorial.bench --device cuda --ldnet-step --out "$out/layers" ;;
        *) echo "unknown part $part: step-float32 step-fp16 step-bf16 against tests timm layers"; exit 2 ;;
    esac
done
