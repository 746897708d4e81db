"""`main` of the py_test targets in BUILD: runs pytest on the test files given as arguments.

Not a test itself (no test_ prefix). Under `bazel test` it writes the JUnit XML Bazel asks for and
honours --test_filter (as pytest -k).
"""
from __future__ import annotations

import os
import sys

import pytest


def main(argv: list[str]) -> int:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    args = [a if os.path.isabs(a) else os.path.join(root, a) for a in argv]
    if not args:
        print("usage: bazel_pytest_main.py TEST_FILE... (the py_test's args)", file=sys.stderr)
        return 2
    ini = os.path.join(root, "pytest.ini")
    if os.path.isfile(ini):
        args = ["-c", ini, "--rootdir", root] + args
    if os.environ.get("XML_OUTPUT_FILE"):
        args.append("--junitxml=" + os.environ["XML_OUTPUT_FILE"])
    if os.environ.get("TESTBRIDGE_TEST_ONLY"):
        args += ["-k", os.environ["TESTBRIDGE_TEST_ONLY"]]
    return int(pytest.main(args))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
