"""Bad input in long jobs: undecodable images are skipped and counted, truncated files warned about.

looks_decodable(bytes) is a cheap in-graph check for what breaks the decoders and does happen in
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
_JPEG_END, _PNG_END, _GIF_END = b"\xff\xd9", b"IEND", b"\x3b"


def _has(tail: tf.Tensor, marker: bytes) -> tf.Tensor:
    """Whether the uint8 vector tail contains the byte string marker."""
    n, k = tf.shape(tail)[0], len(marker)
    hits = tf.ones([tf.maximum(n - k + 1, 0)], tf.bool)
    for i, byte in enumerate(marker):
        hits &= tf.equal(tail[i:n - k + 1 + i], byte)
    return tf.reduce_any(hits)


def looks_decodable(image_bytes: tf.Tensor) -> tf.Tensor:
    """Scalar bool: non-empty, a known image format, and (JPEG/PNG/GIF) not cut short."""
    length = tf.strings.length(image_bytes)
    head = tf.strings.substr(image_bytes, 0, 4)
    tail = tf.io.decode_raw(tf.strings.substr(image_bytes, tf.maximum(length - _TAIL, 0), _TAIL),
                            tf.uint8)
    jpeg = tf.equal(tf.strings.substr(head, 0, 3), b"\xff\xd8\xff")
    png = tf.equal(head, b"\x89PNG")
    gif = tf.equal(head, b"GIF8")
    bmp = tf.equal(tf.strings.substr(head, 0, 2), b"BM")
    return tf.logical_and(length > 0, tf.reduce_any([
        jpeg & _has(tail, _JPEG_END), png & _has(tail, _PNG_END),
        gif & _has(tail, _GIF_END), bmp & (length > 54)]))


def read_tfrecord_file(path: tf.Tensor, size: tf.Tensor) -> tf.data.Dataset:
    """The records of one file; after a DataLossError the rest of the file is skipped, with a
    warning naming the file (printed once, when the file ends)."""
    records = tf.data.TFRecordDataset(path, buffer_size=8 << 20).ignore_errors()
    marked = records.map(lambda r: (r, False)).concatenate(
        tf.data.Dataset.from_tensors((tf.constant(b""), True)))

    def account(total, elem):
        record, last = elem

        def warn():
            with tf.control_dependencies([tf.print(
                    "WARNING: TFRecord file", path, "is truncated or corrupt: read", total,
                    "of", size, "bytes; its remaining records are skipped.",
                    output_stream=sys.stderr)]):
                return tf.constant(True)

        warned = tf.cond(last & tf.not_equal(total, tf.cast(size, tf.int64)), warn,
                         lambda: tf.constant(False))
        with tf.control_dependencies([warned]):
            grown = total + tf.where(last, tf.constant(0, tf.int64),
                                     tf.cast(tf.strings.length(record), tf.int64) + 16)
        return grown, (record, last)

    return marked.scan(tf.constant(0, tf.int64), account).filter(
        lambda record, last: tf.logical_not(last)).map(lambda record, last: record)


def file_sizes(paths: list[str]) -> list[int]:
    """Sizes in bytes (tf.io.gfile, in parallel: each is a request on gs://)."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=min(32, max(1, len(paths)))) as pool:
        return list(pool.map(lambda p: tf.io.gfile.stat(p).length, paths))
