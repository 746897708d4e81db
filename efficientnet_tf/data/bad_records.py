"""Bad input in long jobs: undecodable images are skipped and counted, truncated files warned about.

looks_decodable(bytes) is a cheap in-graph check (vectorized: records go through in batches) for what breaks the decoders and does happen in
real data: empty bytes, bytes that are no JPEG/PNG/GIF/BMP, and truncated JPEG/PNG/GIF files
(their end marker missing from the last 32 bytes). A file that passes it and is still corrupt
inside (its header, say) makes the decoder fail as before.

read_tfrecord_file(path, size) reads one TFRecord file and, at a DataLossError (a truncated or
corrupt file), keeps the records before it, drops the rest of that file only and prints a
warning naming the file (each record takes its length + 16 bytes: the bytes read are checked
against the file's size at its end).

Records that pass looks_decodable and still make the decoder fail (a corrupt header inside a
valid-looking JPEG, say) are dropped too (RecordGuard): each batch is decoded in a nested
pipeline whose errors are ignored; a batch that did not come out whole is decoded again record
by record, and the failed records are logged by file and index and counted.
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


def read_tfrecord_file(path: tf.Tensor, size: tf.Tensor, file_number: tf.Tensor) -> tf.data.Dataset:
    """(records, ids): string vectors of up to READ_BATCH records of one file and their int64
    record ids (record_id). After a DataLossError the rest of the file is skipped, with a
    warning naming it (printed when the file ends)."""
    batches = tf.data.TFRecordDataset(path, buffer_size=8 << 20).ignore_errors().batch(READ_BATCH)
    marked = batches.map(lambda r: (r, False)).concatenate(
        tf.data.Dataset.from_tensors((tf.constant([], tf.string), True)))
    size = tf.cast(size, tf.int64)
    first_id = record_id(file_number, 0)

    def account(state, elem):
        total, count = state
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
        n = tf.size(records, out_type=tf.int64)
        ids = first_id + count + tf.range(n)
        return (grown, count + n), (records, ids, last)

    zero = tf.constant(0, tf.int64)
    return marked.scan((zero, zero), account).filter(
        lambda records, ids, last: tf.logical_not(last)).map(lambda records, ids, last: (records, ids))


def record_id(file_number, index):
    """int64 id of record `index` (0-based) of file number `file_number` of a source list."""
    return tf.bitwise.left_shift(tf.cast(file_number, tf.int64), 32) + tf.cast(index, tf.int64)


class RecordGuard:
    """Drops the records the decoder fails on, naming and counting them.

        guard = RecordGuard(file_names, counts, check_labels)
        batches = guard.decode_batches(ds, fn, batch_size, drop_remainder, num_parallel_calls)

    ds holds (image bytes, label, record id, *rest); fn(bytes, label, *rest) -> (image, label).
    Each batch is decoded as one nested tf.data pipeline (a parallel map fused with its batch,
    as without the guard), errors ignored: a batch that comes out whole is passed on. When
    one did not, its records are decoded again one by one to find the failed ones, which are
    logged (file and index, once per record) and counted in counts[1] (an int64 variable [2]
    or None; the records were counted as read where they were parsed). With drop_remainder
    the rest of that batch is left out too (batches stay full: static shapes); without it,
    the rest comes out as a smaller batch. check_labels(labels) runs on every batch outside
    the error-ignoring part, so a bad label stays fatal. With count_repeats=False (records
    parsed and counted as read once, then cached) a record is counted once, not every epoch.
    """

    def __init__(self, file_names: list[str], counts: tf.Variable | None = None,
                 check_labels=None, count_repeats: bool = True):
        self.names = tf.constant(list(file_names) or [""])
        self.counts = counts
        self.count_repeats = count_repeats  # False: each record counted once (a cached input)
        self.check_labels = check_labels or (lambda labels: labels)
        with tf.device("/cpu:0"):  # the ids already logged
            self.logged = tf.lookup.experimental.MutableHashTable(tf.int64, tf.int32, 0)

    def decode_batches(self, ds: tf.data.Dataset, fn, batch_size: int, drop_remainder: bool,
                       num_parallel_calls: int) -> tf.data.Dataset:
        raw = ds.batch(batch_size, drop_remainder=drop_remainder)

        def attempt(image_bytes, labels, ids, *rest):
            whole = tf.data.Dataset.from_tensor_slices((image_bytes, labels, *rest)).map(
                fn, num_parallel_calls=num_parallel_calls, deterministic=True
            ).batch(batch_size).ignore_errors()
            image_spec, label_spec = whole.element_spec
            empty = (tf.zeros([0, *image_spec.shape[1:]], image_spec.dtype),
                     tf.zeros([0], label_spec.dtype))
            first = whole.map(lambda images, labels: (images, labels, True)).concatenate(
                tf.data.Dataset.from_tensors((*empty, False))).take(1)

            def salvage(_):
                one_by_one = tf.data.Dataset.from_tensor_slices((image_bytes, labels, ids, *rest))
                kept = one_by_one.map(lambda b, y, i, *r: (*fn(b, y, *r), i)).ignore_errors()
                kept = kept.batch(batch_size).concatenate(tf.data.Dataset.from_tensors(
                    (*empty, tf.zeros([0], tf.int64)))).take(1)

                def report(images, labels, kept_ids):
                    failed = tf.sparse.to_dense(tf.sets.difference(ids[None], kept_ids[None]))[0]
                    with tf.control_dependencies([self.log(
                            failed, "the image decoder failed on it (corrupt image data)",
                            count=True)]):
                        return tf.identity(images), tf.identity(labels)
                out = kept.map(report)
                if drop_remainder:  # the batch is short now: left out (logged above)
                    out = out.filter(lambda images, labels: tf.equal(
                        tf.shape(labels)[0], batch_size))
                return out.filter(lambda images, labels: tf.size(labels) > 0)

            def choose(images, labels, ok):
                good = tf.data.Dataset.from_tensors((images, labels)).filter(lambda *_: ok)
                redo = tf.data.Dataset.from_tensors(0).filter(lambda _: tf.logical_not(ok))
                return good.concatenate(redo.flat_map(salvage))
            return first.flat_map(choose)

        # Two batches in flight (each decoded by its own parallel map), in order.
        # (bench/pipeline.py on 2 cores: in order was 5% faster than out of order, and 4
        # batches in flight were 1.5-15x slower: their parallel maps fight for the cores.)
        out = raw.interleave(attempt, cycle_length=2, block_length=1, num_parallel_calls=2,
                             deterministic=True)

        def checked(images, labels):
            if drop_remainder:
                images = tf.ensure_shape(images, [batch_size, *images.shape[1:]])
                labels = tf.ensure_shape(labels, [batch_size])
            return images, self.check_labels(labels)
        return out.map(checked)

    def log(self, ids: tf.Tensor, why: str, count: bool) -> tf.Tensor:
        """Logs the records of `ids` (int64 [m], record_id) on stderr, each once per job; with
        `count`, adds to counts[1] m (or, without count_repeats, the ones not seen before).
        Returns True (run it as a dependency)."""
        ids = tf.reshape(ids, [-1])
        shown = tf.boolean_mask(ids, tf.reshape(tf.equal(self.logged.lookup(ids), 0), [-1]))
        ops = [self.logged.insert(shown, tf.ones_like(shown, tf.int32))]
        if count and self.counts is not None:
            n = tf.size(ids if self.count_repeats else shown, out_type=tf.int64)
            ops.append(self.counts.assign_add(tf.stack([tf.constant(0, tf.int64), n])))
        files = tf.gather(self.names, tf.cast(tf.bitwise.right_shift(shown, 32), tf.int32))
        index = tf.strings.as_string(tf.bitwise.bitwise_and(shown, 0xFFFFFFFF))
        lines = tf.strings.join(["WARNING: skipped record ", index, " of ", files, f": {why}."])
        with tf.control_dependencies(ops):
            printed = tf.cond(tf.size(lines) > 0, lambda: tf.group(tf.print(
                tf.strings.reduce_join(lines, separator="\n"), output_stream=sys.stderr)),
                tf.no_op)
        with tf.control_dependencies([printed]):
            return tf.constant(True)


def file_sizes(paths: list[str]) -> list[int]:
    """Sizes in bytes (tf.io.gfile, in parallel: each is a request on gs://)."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=min(32, max(1, len(paths)))) as pool:
        return list(pool.map(lambda p: tf.io.gfile.stat(p).length, paths))
