#!/bin/bash
# usage: results/identity/run.sh CODE_DIR OUT_DIR FOLDERS_DIR
# Every benchmark image of the shipped model (shapes-sam, shapes-mig) and images of tiny SD1.5 / SD3 /
# authors' folders (FOLDERS_DIR from build_folders.py), made by the idruid source tree CODE_DIR
# (a git worktree of the commit to check), one thread; OUT_DIR/images.md5 lists every image's MD5.
set -e
HERE=$(cd "$(dirname "$0")" && pwd)
CODE=$1; OUT=$2; F=$3; L=$HERE/layouts.jsonl
export PYTHONPATH=$CODE/src OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
I="python -m idruid.cli"
mkdir -p "$OUT"
$I generate "$L" --checkpoint "$F/druid" --base "$F/sd3" --out "$OUT/druid-images" --steps 4
$I train --config "$HERE/sd15.yaml" --out "$OUT/sd15-train" model.base_model="$F/sd15"
$I generate "$L" --checkpoint "$OUT/sd15-train/model" --out "$OUT/sd15-images" --steps 4
$I train --config "$HERE/sd3.yaml" --out "$OUT/sd3-train" model.base_model="$F/sd3"
$I generate "$L" --checkpoint "$OUT/sd3-train/model" --out "$OUT/sd3-images" --steps 4
$I eval --benchmark shapes-sam --out "$OUT/shapes-sam"
$I eval --benchmark shapes-mig --out "$OUT/shapes-mig"
cd "$OUT" && find . -name '*.png' | sort | xargs md5sum > images.md5 && wc -l images.md5
