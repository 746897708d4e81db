"""Files under model_dir / export_dir, on any filesystem tf.io.gfile knows (local, gs://, ram://).

Crash safety: write_file writes a temporary file and renames it over the target, so a reader
sees the old or the new content, never half of it. On gs:// rename is a copy plus a delete,
but an object appears only when its upload completes, so there the file is written in place
(the same guarantee). Directory renames are not atomic on object stores (and TensorFlow's
ram:// loses the children), so nothing here renames a directory on a remote filesystem.
TensorFlow is imported lazily: this module sits with config.py below everything else.
"""
from __future__ import annotations

import json
import os
import shutil

ATOMIC_OBJECT_WRITES = ("gs://",)  # object stores: a write is all-or-nothing at close


def is_remote(path: str) -> bool:
    return "://" in path


def write_file(path: str, data: str | bytes) -> str:
    """Writes data to path atomically: temp file + rename (local files are fsynced first, so
    a power loss leaves the old or the new content); a plain write on gs://. The one atomic
    writer of the package (put_file: the same for a finished local file)."""
    mode = "wb" if isinstance(data, bytes) else "w"

    def fill(tmp, gfile=None):
        with (gfile.GFile(tmp, mode) if gfile else open(tmp, mode)) as f:
            f.write(data)

    return _replace(path, fill)


def put_file(local_path: str, path: str) -> str:
    """Puts a finished local file (e.g. one Keras saved) at path with write_file's guarantee:
    the old or the new file, never half of one."""
    def fill(tmp, gfile=None):
        if gfile:
            gfile.copy(local_path, tmp, overwrite=True)
        else:
            shutil.copyfile(local_path, tmp)

    return _replace(path, fill)


def _replace(path: str, fill) -> str:
    """fill(tmp[, gfile]) writes the new content; it then replaces path. Local: a temporary
    file beside path, fsynced, os.replace; gs://: fill writes path itself (an object appears
    whole); other filesystems: a temporary file + gfile rename."""
    directory = os.path.dirname(path)
    tmp = os.path.join(directory, f".{os.path.basename(path)}.tmp-{os.getpid()}")
    if not is_remote(path):
        if directory:
            os.makedirs(directory, exist_ok=True)
        try:
            fill(tmp)
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.remove(tmp)
            raise
        return path
    import tensorflow as tf

    tf.io.gfile.makedirs(directory)
    if path.startswith(ATOMIC_OBJECT_WRITES):
        fill(path, tf.io.gfile)
        return path
    try:
        fill(tmp, tf.io.gfile)
        tf.io.gfile.rename(tmp, path, overwrite=True)
    finally:
        if tf.io.gfile.exists(tmp):
            tf.io.gfile.remove(tmp)
    return path


def append_line(path: str, line: str) -> None:
    """Appends one line (a JSON record); GCS has no append, so gfile rewrites the object there."""
    import tensorflow as tf

    with tf.io.gfile.GFile(path, "a") as f:
        f.write(line.rstrip("\n") + "\n")


def read_json(path: str):
    """The parsed JSON file, or None when it is missing or unreadable."""
    import tensorflow as tf

    try:
        with tf.io.gfile.GFile(path) as f:
            return json.load(f)
    except (tf.errors.NotFoundError, OSError, ValueError):
        return None


def read_jsonl(path: str) -> list:
    """The records of a JSON-lines file ([] when missing); a torn last line is dropped."""
    import tensorflow as tf

    if not tf.io.gfile.exists(path):
        return []
    with tf.io.gfile.GFile(path) as f:
        lines = [line for line in f.read().splitlines() if line.strip()]
    records = []
    for i, line in enumerate(lines):
        try:
            records.append(json.loads(line))
        except ValueError:
            if i != len(lines) - 1:
                raise
    return records
