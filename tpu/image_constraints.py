#!/usr/bin/env python3
"""pip constraints that keep a TPU VM image's packages (TensorFlow, numpy, protobuf ...) as they
are while pip installs our requirements next to them. Runs on the VM (tpu/setup_vm.sh image):

    python3 -m pip list --format=freeze > FREEZE
    python3 tpu/image_constraints.py FREEZE tpu/requirements-tpu.txt > CONSTRAINTS
    python3 -m pip install -c CONSTRAINTS -r tpu/requirements-tpu.txt

Every installed package is pinned to its installed version, except one that our requirements
name and whose installed version does not satisfy them: it has to change, and pinning it would
only make pip fail. TensorFlow is not in our requirements, so it always stays pinned. A pinned
package that a new requirement needs in another version makes pip stop with a conflict instead
of replacing what `import tensorflow` depends on.
"""
from __future__ import annotations

import re
import sys

try:
    from packaging.requirements import InvalidRequirement, Requirement
    from packaging.version import InvalidVersion, Version
except ImportError:  # pip's own copy: every python with pip has it
    from pip._vendor.packaging.requirements import InvalidRequirement, Requirement
    from pip._vendor.packaging.version import InvalidVersion, Version


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def read_requirements(text: str) -> dict[str, Requirement]:
    reqs = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line or line.startswith("-"):
            continue
        try:
            req = Requirement(line)
        except InvalidRequirement as e:
            raise ValueError(f"bad requirement line {line!r}: {e}") from None
        if req.marker is None or req.marker.evaluate():
            reqs[canonical(req.name)] = req
    return reqs


def constraints(freeze: str, requirements: str) -> tuple[list[str], list[str]]:
    """(constraint lines, notes on what was left out and why)."""
    reqs = read_requirements(requirements)
    lines, notes = [], []
    for entry in freeze.splitlines():
        name, sep, version = entry.strip().partition("==")
        if not sep:
            continue  # not name==version (pip list --format=freeze writes only those)
        try:
            Version(version)
        except InvalidVersion:
            notes.append(f"not pinned: {name}=={version} (not a PEP 440 version)")
            continue
        req = reqs.get(canonical(name))
        if req is not None and not req.specifier.contains(version, prereleases=True):
            notes.append(f"not pinned: {name}=={version} (we need {req})")
            continue
        lines.append(f"{name}=={version}")
    return lines, notes


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python3 tpu/image_constraints.py FREEZE_FILE REQUIREMENTS_FILE",
              file=sys.stderr)
        return 2
    with open(argv[0]) as f:
        freeze = f.read()
    with open(argv[1]) as f:
        requirements = f.read()
    try:
        lines, notes = constraints(freeze, requirements)
    except ValueError as e:
        print(f"tpu/image_constraints.py: error: {e}", file=sys.stderr)
        return 2
    for note in notes:
        print(note, file=sys.stderr)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
