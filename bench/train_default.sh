#!/usr/bin/env bash
# The exact command that trained the shipped default model (CPU, ~45 min training + ~5 min evaluation on 2 cores).
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/medforensics train forensic_cnn \
  --out src/medforensics/detectors/weights/forensic_cnn_default \
  --workdir runs/work --seed 0 --tamper-fraction 0.5 \
  --set epochs=14 --set width=32 --set batch_size=16 --set patches_per_image=8 --set num_workers=1 \
  --set progress=false --n-boot 100 --force "$@"
