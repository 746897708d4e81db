#!/usr/bin/env bash
# Continuous evaluation of a run's checkpoints (--mode=eval). The training TPU is busy, so run
# this on another machine: on CPU (default) or with --eval_tpu=local on a second TPU VM.
#   tpu/launch_eval.sh --bucket=gs://my-bucket [--accelerator_type=v3-8] [--run_name=NAME]
#                      [--name=OTHER_VM --zone=Z] [--eval_tpu=local] [--dry_run]
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
exec python3 "$here/commands.py" eval --model=efficientnet-b0 "$@"
