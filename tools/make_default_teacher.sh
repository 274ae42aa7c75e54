#!/usr/bin/env bash
# Recreates weights/teacher_small.pdparams, the default EfficientAD-S teacher shipped in this
# repository (weights/README.md says what it is and how good it is). Runs offline on a CPU:
# the images and the EfficientNet-Lite0 ImageNet weights come from installed pip packages.
#
#   bash tools/make_default_teacher.sh [work folder]     (default: /tmp/default_teacher)
set -euo pipefail
if [[ ${1:-} == -h || ${1:-} == --help ]]; then
    sed -n '2,6s/^# \{0,1\}//p' "$0"
    exit 0
fi
cd "$(dirname "$0")/.."
WORK=${1:-/tmp/default_teacher}
DATA="$WORK/images"

# 1. The distillation images: the photographs scikit-image ships in its wheel whose docstrings
#    dedicate them to the public domain (CC0 or "released into the public domain"). brick and
#    gravel are left out on purpose: sample_data/ is made from them, and the teacher must not
#    have seen the images it is later compared on.
python - "$DATA" <<'PY'
import os, sys
import cv2
import skimage.data

folder = sys.argv[1]
os.makedirs(folder, exist_ok=True)
photos = {name: getattr(skimage.data, name)() for name in (
    "astronaut", "camera", "chelsea", "clock", "coffee", "grass", "hubble_deep_field",
    "retina", "rocket", "text")}
for name, image in photos.items():
    bgr = image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    cv2.imwrite(os.path.join(folder, f"{name}.png"), bgr)
print(f"{len(photos)} images in {folder}")
PY

# 2. Distil EfficientNet-Lite0 (stride-8 + stride-16 stages) into a padded PDN-S.
python main.py --model efficientad_s --mode distill --data_dir "$DATA" --output_dir "$WORK" \
    --backbone efficientnet_lite0 --image_size 256 --crop_size 64 --batch_size 8 \
    --steps 1400 --lr 0.001 --seed 0 --save_interval 100 --log_interval 50 --cpu_threads 2

# 3. Ship it (fp16, ~5.4 MB): EfficientAD-S loads weights/teacher_small.pdparams by default.
cp "$WORK/teacher_small.pdparams" weights/teacher_small.pdparams
