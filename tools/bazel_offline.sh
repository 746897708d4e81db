#!/usr/bin/env bash
# Runs the top-level BUILD with Debian's Bazel 4.2.3 (bazel-bootstrap) and no network.
#
#   tools/bazel_offline.sh build //:all
#   tools/bazel_offline.sh test //:test_build_file //:test_tfrecord
#
# Bazel 4 fetches rules_cc, remote_coverage_tools, rules_python and the pip hub from the internet.
# Here they are replaced (--override_repository) by local stand-ins built under $WORK:
#   rules_cc       Debian's bazel-rules-cc, with `use_cpp_toolchain` (newer than Bazel 4) patched out
#   rules_java/proto, platforms, skylib: Debian's packages as they are
#   remote_coverage_tools: a stub (`bazel coverage` does not work)
#   rules_python   py_library/py_binary/py_test = Bazel 4's native rules
#   pip            requirement("x") -> an empty py_library per name in requirements_lock.txt; the
#                  packages themselves come from the interpreter below (the project .venv), so
#                  Bazel does not pin or hash them here. With network, MODULE.bazel does it properly.
# Only build/test/run take these flags. Needs: apt-get install bazel-bootstrap bazel-rules-cc
#   bazel-rules-java bazel-rules-proto bazel-platforms bazel-skylib
set -euo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
PY="${PYTHON:-$REPO/.venv/bin/python}"
WORK="${BAZEL_OFFLINE_DIR:-/tmp/efficientnet_tf_bazel_offline}"
SHARE=/usr/share/bazel
if [[ $# -lt 1 ]]; then
  echo "usage: $0 build|test|run TARGET... [bazel flags]" >&2; exit 2
fi
for d in "$SHARE/rules/cc" "$SHARE/rules/java" "$SHARE/rules/proto" "$SHARE/tools/platforms" \
         "$SHARE/tools/skylib"; do
  [[ -d $d ]] || { echo "missing $d: apt-get install bazel-bootstrap bazel-rules-cc" \
    "bazel-rules-java bazel-rules-proto bazel-platforms bazel-skylib" >&2; exit 1; }
done
[[ -x $PY ]] || { echo "no Python at $PY: create the .venv (bash run.sh test) or set PYTHON=" >&2; exit 1; }

S="$WORK/shims"
rm -rf "$S" && mkdir -p "$S"
cp -rL "$SHARE/rules/cc" "$S/rules_cc"
sed -i 's/, "use_cpp_toolchain")/)/; s#use_cpp_toolchain()#["@bazel_tools//tools/cpp:toolchain_type"]#' \
  "$S"/rules_cc/cc/private/rules_impl/*.bzl

mkdir -p "$S/coverage"
touch "$S/coverage/WORKSPACE"
printf '#!/bin/sh\necho "bazel coverage is not available offline" >&2\nexit 1\n' > "$S/coverage/gen.sh"
chmod +x "$S/coverage/gen.sh"
echo 'sh_binary(name = "coverage_report_generator", srcs = ["gen.sh"], visibility = ["//visibility:public"])' \
  > "$S/coverage/BUILD"

mkdir -p "$S/rules_python/python"
touch "$S/rules_python/WORKSPACE" "$S/rules_python/BUILD" "$S/rules_python/python/BUILD"
cat > "$S/rules_python/python/defs.bzl" <<'BZL'
def py_library(**kwargs):
    native.py_library(**kwargs)

def py_binary(**kwargs):
    native.py_binary(**kwargs)

def py_test(**kwargs):
    native.py_test(**kwargs)
BZL

mkdir -p "$S/pip"
touch "$S/pip/WORKSPACE"
cat > "$S/pip/requirements.bzl" <<'BZL'
def requirement(name):
    return "@pip//:" + name.lower().replace("-", "_").replace(".", "_")
BZL
{
  echo 'load("@bazel_tools//tools/python:toolchain.bzl", "py_runtime_pair")'
  echo 'package(default_visibility = ["//visibility:public"])'
  grep -v '^\s*#' "$REPO/requirements_lock.txt" | grep -v '^\s*$' | cut -d= -f1 | tr 'A-Z' 'a-z' \
    | tr -- '-.' '__' | sed 's/.*/py_library(name = "&")/'
  echo "py_runtime(name = \"py3\", interpreter_path = \"$PY\", python_version = \"PY3\")"
  echo 'py_runtime_pair(name = "runtime_pair", py3_runtime = ":py3")'
  echo 'toolchain(name = "toolchain", toolchain = ":runtime_pair", toolchain_type = "@bazel_tools//tools/python:toolchain_type")'
} > "$S/pip/BUILD"

cmd="$1"; shift
cd "$REPO"
exec bazel --output_user_root="$WORK/root" "$cmd" \
  --override_repository=rules_cc="$S/rules_cc" \
  --override_repository=rules_java="$SHARE/rules/java" \
  --override_repository=rules_proto="$SHARE/rules/proto" \
  --override_repository=platforms="$SHARE/tools/platforms" \
  --override_repository=bazel_skylib="$SHARE/tools/skylib" \
  --override_repository=remote_coverage_tools="$S/coverage" \
  --override_repository=rules_python="$S/rules_python" \
  --override_repository=pip="$S/pip" \
  --extra_toolchains=@pip//:toolchain \
  --symlink_prefix=/ \
  --test_env=TF_CPP_MIN_LOG_LEVEL=2 \
  "$@"
