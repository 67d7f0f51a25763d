#!/bin/sh
# Install embedforge's image requirement set for one variant (its FAISS extra and `documents`, the PDF/DOCX/PPTX
# readers) into the current Python, exactly as pinned:
#   images/install.sh cpu|gpu [PROJECT_DIR]
# The Dockerfile runs it, tests/install/test_images.py runs it in a fresh venv (the CPU set), so the recipe CI tests is
# the recipe the image builds with. CPU torch comes from the PyTorch CPU index (TORCH_INDEX_URL; set it empty
# where a mirror or find-links already serves torch==<version>+cpu); the GPU set takes PyPI's CUDA torch.
set -eu
VARIANT="${1:?usage: images/install.sh cpu|gpu [PROJECT_DIR]}"
PROJECT="${2:-.}"
HERE="$(cd "$(dirname "$0")" && pwd)"
case "$VARIANT" in
  cpu) INDEX="${TORCH_INDEX_URL-https://download.pytorch.org/whl/cpu}" ;;
  gpu) INDEX="" ;;
  *) echo "images/install.sh: VARIANT must be cpu or gpu, not '$VARIANT'" >&2; exit 2 ;;
esac
PYTHON="${PYTHON:-python}"
# shellcheck disable=SC2086  # INDEX is empty or one option pair
"$PYTHON" -m pip install ${INDEX:+--extra-index-url "$INDEX"} -c "$HERE/constraints-$VARIANT.txt" "$PROJECT[$VARIANT,documents]"
# Conflicting requirements fail here, not at run time.
"$PYTHON" -m pip check
