#!/usr/bin/env bash
# The GPU checks of the stochastic-depth and trial issues, as one prepared script for a session
# lent a GPU machine (about 10 minutes of its 15). It needs only torch, torchvision, numpy and
# pyyaml there (no Ray): it runs sd_tune/ and benchmarks/ from the copy of the repository.
#
# Here first:   mkdir -p .gpu_data && cp /usr/share/datasets/fashion-mnist/*.gz .gpu_data/
#               (.gpu_data/ is git-ignored; name it in the run's `carry`)
# There:        bash benchmarks/gpu_check.sh          (writes everything under $OUT)
#
# Each part has its own time limit, so one that hangs or runs long leaves the rest their turn.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-results/gpu_check}"
mkdir -p "$OUT"
export SD_TUNE_DATA="$PWD/.gpu_data"
export PYTHONUNBUFFERED=1
part() {  # part NAME SECONDS COMMAND...
    local name=$1 limit=$2
    shift 2
    echo "=== $name (limit ${limit}s): $*"
    local start=$SECONDS
    timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
    echo "=== $name: exit $?, $((SECONDS - start)) s"
    tail -n 25 "$OUT/$name.log"
}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/gpu.txt"
python -c "import torch, torchvision; print(torch.__version__, torchvision.__version__)" \
    | tee -a "$OUT/gpu.txt"

# 1. Stochastic depth against plain, eager: ResNet-50 224 b256 bf16 channels_last, every
#    configuration (Triton kernels and their torch fallback side by side), then the profile.
part sd_eager 120 python benchmarks/sd_step.py --preset gpu --models resnet50_224 \
    --no-compile --rounds 6 --profile --out "$OUT/sd_eager.json"
# 2. Compiled (a cold compile cache: ~50 s per distinct model): plain, mask and mask under drop
#    warmup (the same graphs), block. subset's per-shape regions would take longer than is left.
part sd_compiled 210 python benchmarks/sd_step.py --preset gpu --models resnet50_224 \
    --compile --rounds 5 --configs plain sample_mask_0.1 sample_mask_0.1_warmup block_0.5 \
    --out "$OUT/sd_compiled.json"
# 3. What block could reach (each block dropped alone), and the CIFAR ResNets, eager.
part sd_floor 60 python benchmarks/sd_step.py --preset gpu --models resnet50_224 \
    --no-compile --rounds 3 --configs plain block_0.5 --floor --out "$OUT/sd_floor.json"
part sd_cifar 60 python benchmarks/sd_step.py --preset gpu --no-compile --rounds 5 \
    --models cifar_resnet110_b128 cifar_resnet20_fmnist --out "$OUT/sd_cifar.json"
# 4. The trial loop against the bare step (compiled, as train.compile: auto does on CUDA).
part loop 180 python benchmarks/train_throughput.py --device cuda --epochs 3 \
    --out "$OUT/loop.json"
echo "=== done; files in $OUT"
