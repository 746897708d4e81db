#!/usr/bin/env bash
# The front door.  `bash run.sh demo` runs the main job, `bash run.sh test` runs the tests.
# Each sets itself up first: apt data set (when root and apt exist), a virtualenv in .venv,
# and `pip install -e .[test]`.
set -euo pipefail
cd "$(dirname "$0")"
VENV=${VENV:-.venv}

setup() {
  if [ ! -d /usr/share/datasets/fashion-mnist ]; then
    if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
      (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist) >/dev/null \
        || echo "warning: could not apt-get install dataset-fashion-mnist; Fashion-MNIST tests will skip (fail with CI set)" >&2
    else
      echo "note: Fashion-MNIST not found at /usr/share/datasets/fashion-mnist;" \
           "install it with: sudo apt-get install dataset-fashion-mnist" >&2
    fi
  fi
  if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
  fi
  "$VENV/bin/python" -m pip install -q --upgrade pip >/dev/null
  "$VENV/bin/python" -m pip install -q -e ".[test]"
}

export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-2}
case "${1:-demo}" in
  demo) shift || true; setup; exec "$VENV/bin/python" -m efficientnet_tf.demo "$@" ;;
  # Two test processes (pytest-xdist), a whole file per process (module fixtures built once);
  # TEST_WORKERS=0 runs them in this process, one after the other.
  test) shift || true; setup
        exec "$VENV/bin/python" -m pytest -q -n "${TEST_WORKERS:-2}" --dist loadfile "$@" ;;
  *) echo "usage: bash run.sh [demo|test] [args...]" >&2; exit 2 ;;
esac
