#!/bin/bash
# The many-positive debates scenario (bench/dev_collections.py) on the device: base, then fixed (and others) per seed.
set -u; . bench/device/setup.sh
python3 -c "import sys; sys.path.insert(0, 'bench'); import dev_collections as d; from pathlib import Path; print(d.debates(Path('/tmp/work'), train_share=${SHARE:-0.4}))" > $OUT/folder.txt || exit 5
D=$(cat $OUT/folder.txt)
q debates $D debates.jsonl --variants base --seeds 13
for s in ${SEEDS:-13 14 15}; do q debates $D debates.jsonl --variants ${VARIANTS:-fixed,fixed_top} --seeds $s; done
grep -v '^{' $OUT/log.txt | grep -v "INFO\|Loading\|it/s" | tail -30
