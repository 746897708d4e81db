#!/usr/bin/env bash
# Runs ON the TPU VM, in the unpacked checkout (tpu/commands.py install does this):
#   bash tpu/setup_vm.sh image   # keep the image's TensorFlow (matches its libtpu); default
#   bash tpu/setup_vm.sh pypi    # venv ~/efn-venv with tensorflow-tpu from PyPI (newest: 2.20.0)
# tensorflow-tpu 2.20.0 asks for libtpu~=0.0.14, so pip takes the newest libtpu; from 0.0.32 on,
# `import tensorflow` aborts ("... not available in this library": symbols TF needs are gone;
# seen on 0.0.32, 0.0.33, 0.0.35, 0.0.41, 0.0.52). 0.0.31 and older load, hence the pin.
# Our setup.py pins tensorflow>=2.21,<2.22, which has no TPU build, so the package itself is
# installed with --no-deps and its other dependencies come from tpu/requirements-tpu.txt.
set -euo pipefail
mode="${1:-image}"
cd "$(dirname "${BASH_SOURCE[0]}")/.."
case "$mode" in
  image)
    python3 -c 'import tensorflow as tf; print("TPU VM image TensorFlow", tf.__version__)'
    # Pin what the image has (TensorFlow, numpy, protobuf ...), so that our requirements cannot
    # upgrade what its TensorFlow was built against; see tpu/image_constraints.py.
    freeze="${TMPDIR:-/tmp}/efn-image-freeze.txt"
    constraints="${TMPDIR:-/tmp}/efn-image-constraints.txt"
    python3 -m pip list --format=freeze > "$freeze"
    python3 tpu/image_constraints.py "$freeze" tpu/requirements-tpu.txt > "$constraints"
    python3 -m pip install -c "$constraints" -r tpu/requirements-tpu.txt
    python3 -m pip install --no-deps .
    ;;
  pypi)
    # Ubuntu's python3 makes venvs only with the python3-venv package
    sudo apt-get update -q
    sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3-venv
    python3 -m venv ~/efn-venv
    . ~/efn-venv/bin/activate
    python3 -m pip install -U pip
    python3 -m pip install "tensorflow-tpu==2.20.0" "libtpu<=0.0.31"
    python3 -m pip install -r tpu/requirements-tpu.txt
    python3 -m pip install --no-deps .
    # The launch commands point TF_PLUGGABLE_DEVICE_LIBRARY_PATH at this file (not the image's
    # /lib/libtpu.so): the libtpu wheel keeps it at libtpu/libtpu.so.
    libtpu_so="$(python3 -c 'import libtpu; print(libtpu.get_library_path())')"
    if [ ! -f "$libtpu_so" ]; then
      echo "setup_vm.sh: the venv's libtpu package has no $libtpu_so" >&2
      exit 1
    fi
    echo "libtpu of the venv: $libtpu_so"
    ;;
  *)
    echo "usage: bash tpu/setup_vm.sh [image|pypi]" >&2
    exit 2
    ;;
esac
python3 -c 'import efficientnet_tf, tensorflow as tf; print("efficientnet_tf imports; TensorFlow", tf.__version__)'
