"""Bad input in long jobs: undecodable images are skipped and counted, truncated files warned about.

looks_decodable(bytes) is a cheap in-graph check (vectorized: records go through in batches) for what breaks the decoders and does happen in
real data: empty bytes, bytes that are no JPEG/PNG/GIF/BMP, and truncated JPEG/PNG/GIF files
(their end marker missing from the last 32 bytes). A file that passes it and is still corrupt
inside (its header, say) makes the decoder fail as before.

read_tfrecord_file(path, size) reads one TFRecord file and, at a DataLossError (a truncated or
corrupt file), keeps the records before it, drops the rest of that file only and prints a
warning naming the file (each record takes its length + 16 bytes: the bytes read are checked
against the file's size at its end).
"""
from __future__ import annotations

import sys

import tensorflow as tf

_TAIL = 32
READ_BATCH = 64  # records handled together: one function call per 64 records, not per record


def _has(tail: tf.Tensor, marker: bytes) -> tf.Tensor:
    """Whether each row of the uint8 matrix tail [n, _TAIL] contains the bytes marker."""
    k = len(marker)
    hits = tf.ones_like(tail[:, :_TAIL - k + 1], tf.bool)
    for i, byte in enumerate(marker):
        hits &= tf.equal(tail[:, i:_TAIL - k + 1 + i], byte)
    return tf.reduce_any(hits, axis=1)


def looks_decodable(image_bytes: tf.Tensor) -> tf.Tensor:
    """Bool [n] for a string vector [n]: non-empty, a known image format, and (JPEG, PNG, GIF)
    its end marker within the last 32 bytes, i.e. not cut short."""
    length = tf.strings.length(image_bytes)
    head = tf.strings.substr(image_bytes, 0, 4)
    start = tf.maximum(length - _TAIL, 0)
    tail = tf.io.decode_raw(tf.strings.substr(image_bytes, start, tf.fill(tf.shape(start), _TAIL)),
                            tf.uint8, fixed_length=_TAIL)  # zero-padded: no false markers
    jpeg = tf.equal(tf.strings.substr(head, 0, 3), b"\xff\xd8\xff") & _has(tail, b"\xff\xd9")
    png = tf.equal(head, b"\x89PNG") & _has(tail, b"IEND")
    gif = tf.equal(head, b"GIF8") & _has(tail, b"\x3b")
    bmp = tf.equal(tf.strings.substr(head, 0, 2), b"BM") & (length > 54)
    return (length > 0) & (jpeg | png | gif | bmp)


def read_tfrecord_file(path: tf.Tensor, size: tf.Tensor) -> tf.data.Dataset:
    """String vectors of up to READ_BATCH records of one file. After a DataLossError the rest
    of the file is skipped, with a warning naming it (printed when the file ends)."""
    batches = tf.data.TFRecordDataset(path, buffer_size=8 << 20).ignore_errors().batch(READ_BATCH)
    marked = batches.map(lambda r: (r, False)).concatenate(
        tf.data.Dataset.from_tensors((tf.constant([], tf.string), True)))
    size = tf.cast(size, tf.int64)

    def account(total, elem):
        records, last = elem

        def warn():
            with tf.control_dependencies([tf.print(
                    "WARNING: TFRecord file", path, "is truncated or corrupt: read", total,
                    "of", size, "bytes; its remaining records are skipped.",
                    output_stream=sys.stderr)]):
                return tf.constant(True)

        warned = tf.cond(last & tf.not_equal(total, size), warn, lambda: tf.constant(False))
        with tf.control_dependencies([warned]):  # each record takes its length + 16 bytes
            grown = total + tf.reduce_sum(tf.cast(tf.strings.length(records), tf.int64) + 16)
        return grown, (records, last)

    return marked.scan(tf.constant(0, tf.int64), account).filter(
        lambda records, last: tf.logical_not(last)).map(lambda records, last: records)


def file_sizes(paths: list[str]) -> list[int]:
    """Sizes in bytes (tf.io.gfile, in parallel: each is a request on gs://)."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=min(32, max(1, len(paths)))) as pool:
        return list(pool.map(lambda p: tf.io.gfile.stat(p).length, paths))
