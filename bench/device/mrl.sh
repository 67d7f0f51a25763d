#!/bin/bash
# Matryoshka quality on the device: base, then the fixed schedule with and without matryoshka_dims, per seed.
set -u; . bench/device/setup.sh
M="--dims 384,192,96"
q cranfield /tmp/data/cranfield mrl.jsonl $M --variants base --seeds 13
for s in 13 14 15; do q cranfield /tmp/data/cranfield mrl.jsonl $M --variants fixed,mrl_fixed --seeds $s; done
q arguana /tmp/data/arguana mrl.jsonl $M --exclude-self --variants base --seeds 13
for s in 13 14 15; do q arguana /tmp/data/arguana mrl.jsonl $M --exclude-self --variants fixed,mrl_fixed --seeds $s; done
grep -v '^{' $OUT/log.txt | grep -v "INFO\|Loading\|it/s" | tail -30
