"""fileio.py: the one atomic writer, JSON-lines records, on local paths and ram://."""
import os

import pytest

from efficientnet_tf import fileio


def test_write_file_replaces_whole_and_leaves_no_temporary_file(tmp_path):
    path = str(tmp_path / "sub" / "best.json")
    assert fileio.write_file(path, "old") == path
    fileio.write_file(path, b"new bytes")
    assert open(path, "rb").read() == b"new bytes"
    assert os.listdir(tmp_path / "sub") == ["best.json"]


def test_a_failed_write_keeps_the_old_content(tmp_path):
    path = str(tmp_path / "config.yaml")
    fileio.write_file(path, "model: b0\n")
    with pytest.raises(TypeError):
        fileio.write_file(path, {"not": "text"})  # fails inside the write
    assert open(path).read() == "model: b0\n" and os.listdir(tmp_path) == ["config.yaml"]


def test_records_round_trip_and_a_torn_last_line_is_dropped(tmp_path):
    for root in (str(tmp_path), "ram://fileio_test"):
        path = os.path.join(root, "history.jsonl")
        fileio.append_line(path, '{"step": 1}')
        fileio.append_line(path, '{"step": 2}\n')
        assert fileio.read_jsonl(path) == [{"step": 1}, {"step": 2}]
        fileio.write_file(path, '{"step": 1}\n{"step": 2}\n{"ste')  # a crash mid-append
        assert fileio.read_jsonl(path) == [{"step": 1}, {"step": 2}]
        fileio.write_file(path, '{"ste\n{"step": 2}\n')  # damage before the end is an error
        with pytest.raises(ValueError):
            fileio.read_jsonl(path)
        assert fileio.read_json(os.path.join(root, "missing.json")) is None
        assert fileio.read_jsonl(os.path.join(root, "missing.jsonl")) == []


def test_put_file_places_a_finished_file_whole(tmp_path):
    src = tmp_path / "local.h5"
    src.write_bytes(b"weights")
    for dest in (str(tmp_path / "out" / "b0.weights.h5"), "ram://fileio_put/b0.weights.h5"):
        assert fileio.put_file(str(src), dest) == dest
        src.write_bytes(b"newer weights")
        fileio.put_file(str(src), dest)
        import tensorflow as tf

        with tf.io.gfile.GFile(dest, "rb") as f:
            assert f.read() == b"newer weights"
        assert tf.io.gfile.listdir(os.path.dirname(dest)) == ["b0.weights.h5"]
        src.write_bytes(b"weights")
    with pytest.raises(FileNotFoundError):
        fileio.put_file(str(tmp_path / "missing"), str(tmp_path / "out" / "b0.weights.h5"))
    assert sorted(os.listdir(tmp_path / "out")) == ["b0.weights.h5"]
