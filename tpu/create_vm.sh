#!/usr/bin/env bash
# Create a single-host Cloud TPU VM and install this checkout on it (tpu/setup_vm.sh).
#   tpu/create_vm.sh --name=efn-v3 [--accelerator_type=v3-8|v4-8] [--zone=Z] [--project=P]
#                    [--tf_version=2.16.1 | --runtime_version=IMAGE] [--tf_source=image|pypi]
#                    [--spot] [--dry_run]
# The zone and TPU software version default per TPU generation (see tpu/README.md).
# Queued resources: python3 tpu/commands.py create --queued ... (then `install` when ACTIVE).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
exec python3 "$here/commands.py" create --install "$@"
