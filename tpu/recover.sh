#!/usr/bin/env bash
# Keep a training run going through Spot preemptions and maintenance events: launch it on the VM,
# poll the VM and the job, and when the VM is PREEMPTED, TERMINATED or gone, delete it (the
# queued resource with --queued), create it again, install this checkout and resume the same
# job from its latest checkpoint; stop when the job exits 0 or after --max_recoveries.
#   tpu/recover.sh --name=efn-v4 --accelerator_type=v4-8 --bucket=gs://my-bucket
#                  [--queued] [--spot] [--tf_source=image|pypi] [--max_recoveries=10]
#                  [--poll_seconds=300] [training flags as for launch_b0.sh] [--dry_run]
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
exec python3 "$here/commands.py" recover "$@"
