#!/usr/bin/env bash
# Launch EfficientNet-B0 training (paper recipe: configs/imagenet.yaml) on a TPU VM
# over ssh, in the background; rerun the same command after a preemption to resume.
#   tpu/launch_b0.sh --name=efn-v3 --bucket=gs://my-bucket [--accelerator_type=v3-8|v4-8]
#                    [--zone=Z] [--project=P] [--train_batch_size=N] [--mode=train]
#                    [--override=key=value ...] [--dry_run]
# Without --name it prints/runs the training command itself (use that on the VM).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
exec python3 "$here/commands.py" train --model=efficientnet-b0 "$@"
