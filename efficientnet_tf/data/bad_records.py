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
valid-looking JPEG, say) are dropped too: RecordGuard gives each record a ticket in the order
the decoder gets them, the decode map keeps that order and ignores errors, and a gap in the
tickets of a batch is a record that failed. Each record carries the ids of its CHUNK
neighbours, so the survivors name the failed one: its file and index are logged (once per
record) and it is counted with the other skipped records.
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


CHUNK = 16  # each record carries the ids of the CHUNK records around it (see RecordGuard)


class RecordGuard:
    """Drops the records the decoder fails on, naming and counting them.

        guard = RecordGuard(file_names, counts)
        ds = guard.tag(ds)                  # (bytes, label, id, *rest) -> + ticket, neighbours
        ds = guard.decode(ds, fn, parallel)  # fn(bytes, label, *rest) -> (image, label)
        ds = guard.report(ds.batch(b))      # -> (images, labels); logs and counts the gaps

    `counts` (an int64 variable [2] or None) gets 1 added to [1] per failed record (the
    records were counted as read where they were parsed). `check_labels(labels)` runs on
    each batch's labels (outside the error-ignoring decode, so a bad label stays fatal).
    A failure after the last record of a finite stream has no later record to reveal it and
    is not counted.
    """

    def __init__(self, file_names: list[str], counts: tf.Variable | None = None,
                 check_labels=None):
        self.names = tf.constant(list(file_names) or [""])
        self.counts = counts
        self.check_labels = check_labels or (lambda labels: labels)
        with tf.device("/cpu:0"):  # the ids already logged
            self.logged = tf.lookup.experimental.MutableHashTable(tf.int64, tf.int32, 0)

    @staticmethod
    def tag(ds: tf.data.Dataset) -> tf.data.Dataset:
        def attach(tickets, elem):
            image_bytes, labels, ids, *rest = elem
            n = tf.shape(ids)[0]
            around = tf.pad(ids, [[0, CHUNK - n]], constant_values=-1)
            return (image_bytes, labels, tickets, tf.tile(around[None], [n, 1]), *rest)
        # In order (explicitly: a map may be parallelized, and the tickets must keep their order).
        return ds.enumerate().batch(CHUNK).map(attach, num_parallel_calls=tf.data.AUTOTUNE,
                                               deterministic=True).unbatch()

    @staticmethod
    def decode(ds: tf.data.Dataset, fn, num_parallel_calls) -> tf.data.Dataset:
        def run(image_bytes, labels, ticket, around, *rest):
            return (*fn(image_bytes, labels, *rest), ticket, around)
        # In order (the tickets of a batch must rise), errors skipped: the gaps are the failures.
        return ds.map(run, num_parallel_calls=num_parallel_calls, deterministic=True
                      ).ignore_errors()

    def report(self, batches: tf.data.Dataset) -> tf.data.Dataset:
        start = (tf.constant(-1, tf.int64), tf.fill([CHUNK], tf.constant(-1, tf.int64)))

        def step(state, batch):
            last, last_around = state
            images, labels, tickets, around = batch
            missing = tf.sparse.to_dense(tf.sets.difference(
                tf.range(last + 1, tickets[-1] + 1)[None], tickets[None]))[0]
            logged = tf.cond(tf.size(missing) > 0,
                             lambda: self._log(missing, tf.concat([[last], tickets], 0),
                                               tf.concat([last_around[None], around], 0)),
                             lambda: tf.constant(True))
            with tf.control_dependencies([logged]):
                labels = self.check_labels(labels)
            return (tickets[-1], around[-1]), (images, labels)
        return batches.scan(start, step)

    def _log(self, missing, tickets, around):
        """Names the records of the missing tickets from a neighbour of the same chunk."""
        same = tf.equal(missing[:, None] // CHUNK, tickets[None, :] // CHUNK)
        holder = tf.argmax(tf.cast(same, tf.int32), axis=1, output_type=tf.int32)
        ids = tf.gather_nd(around, tf.stack([holder, tf.cast(missing % CHUNK, tf.int32)], 1))
        ids = tf.where(tf.reduce_any(same, axis=1), ids, -1)
        return self.log(ids, "the image decoder failed on it (corrupt image data)", count=True)

    def log(self, ids: tf.Tensor, why: str, count: bool) -> tf.Tensor:
        """Logs the records of `ids` (int64 [m]; < 0: not known) on stderr, each known one
        once per job; with `count`, adds m to counts[1]. Returns True (run it as a dependency)."""
        ids = tf.reshape(ids, [-1])
        known = ids >= 0
        new = known & tf.reshape(tf.equal(self.logged.lookup(ids), 0), [-1])
        shown = tf.boolean_mask(ids, new)
        ops = [self.logged.insert(shown, tf.ones_like(shown, tf.int32))]
        if count and self.counts is not None:
            ops.append(self.counts.assign_add(
                tf.stack([tf.constant(0, tf.int64), tf.size(ids, out_type=tf.int64)])))
        files = tf.gather(self.names, tf.cast(tf.bitwise.right_shift(shown, 32), tf.int32))
        index = tf.strings.as_string(tf.bitwise.bitwise_and(shown, 0xFFFFFFFF))
        lines = tf.strings.join(["WARNING: skipped record ", index, " of ", files, f": {why}."])
        unnamed = tf.size(ids) - tf.reduce_sum(tf.cast(known, tf.int32))
        lines = tf.concat([lines, tf.repeat(tf.constant(
            [f"WARNING: skipped a record of unknown name (its neighbours failed too): {why}."]),
            tf.minimum(unnamed, 1))], 0)
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
