"""tf.data input pipeline for training and evaluation, ready for tf.distribute.

    config = DataConfig(data_dir="gs://bucket/imagenet", image_size=224, image_dtype="bfloat16")
    ds = strategy.distribute_datasets_from_function(
        lambda ctx: build_dataset(config, "train", global_batch, input_context=ctx))

Sources: TFRecords in the imagenet_to_gcs format (see tfrecord.py and convert.py), a prepared
tensorflow-datasets data dir (data_dir="tfds:<name>" or "tfds:<name>:<tfds_data_dir>"), or
synthetic random data (synthetic=True) for measuring step time without any files.
Pixels come out in [0, 255]; normalization is in the model.

A TFRecord folder is read whole or refused (check_complete): the shards that dataset_info.json
lists, or without it every index of files named <name>-NNNNN-of-MMMMM, must be there.
"""
from __future__ import annotations

import fnmatch
import json
import math
import os
import re
import sys

import tensorflow as tf

from efficientnet_tf import constants
from efficientnet_tf.config import DataConfig  # noqa: F401  (the pipeline's config; re-exported)
from efficientnet_tf.data import bad_records, preprocessing, seeding, tfrecord

AUTOTUNE = tf.data.AUTOTUNE
IMAGE_DTYPES = {name: tf.as_dtype(name) for name in constants.IMAGE_DTYPES}


def _split(split: str) -> str:
    if split == "train":
        return "train"
    if split in ("validation", "eval", "val", "test"):
        return "validation"
    raise ValueError(f"split must be 'train' or 'validation'/'eval', got {split!r}")


def _tfds_name_and_dir(data_dir: str) -> tuple[str, str | None]:
    name, _, tfds_dir = data_dir[len("tfds:"):].partition(":")
    return name, tfds_dir or None


def check_source(config: DataConfig, splits=("train", "validation")) -> None:
    """The checks build_dataset makes of a TFRecord folder (its dataset_info.json, every split's
    files whole), for a start-up check before anything is written; nothing for synthetic or
    tfds: data."""
    if config.synthetic or not config.data_dir or config.data_dir.startswith("tfds:"):
        return
    check_dataset_info(config)
    for split in splits:
        _checked_files(config, split)


def list_files(config: DataConfig, split: str) -> list[str]:
    """Sorted TFRecord files of a split; ValueError naming pattern and folder when none match
    or when shards are missing (check_complete)."""
    return _checked_files(config, split)[0]


def _checked_files(config: DataConfig, split: str) -> tuple[list[str], list[int] | None]:
    """(files, their sizes in bytes when they had to be read for the check, else None)."""
    pattern = config.train_file_pattern if _split(split) == "train" else config.eval_file_pattern
    files = sorted(tf.io.gfile.glob(os.path.join(config.data_dir, pattern)))
    if not files:
        raise ValueError(
            f"no {split} files match {pattern!r} in {config.data_dir!r}. Make TFRecords with "
            f"`python -m efficientnet_tf.data.convert --output_dir={config.data_dir} "
            "(--train_dir=... | --idx_dir=...)`, set the file pattern, use data_dir='tfds:<name>' "
            "or synthetic data (data.synthetic=true; --use_synthetic_data on the command line).")
    return files, check_complete(config.data_dir, pattern, files)


_SHARD_NAME = re.compile(r"^(.+)-(\d+)-of-(\d+)$")


def _incomplete(data_dir: str, what: str) -> ValueError:
    return ValueError(
        f"{data_dir} is incomplete: {what}. The conversion did not finish or files were removed;"
        f" re-run the converter (python -m efficientnet_tf.data.convert --output_dir={data_dir}"
        " ... --overwrite) or restore the files.")


def _some(names: list[str]) -> str:
    return ", ".join(names[:10]) + (f" and {len(names) - 10} more" if len(names) > 10 else "")


def check_complete(data_dir: str, pattern: str, files: list[str]) -> list[int] | None:
    """ValueError naming the missing shards when the files matching pattern are not a whole split.

    With dataset_info.json listing its shards (the converter writes it last): every listed
    shard that pattern matches must be there, and not empty when it holds records; none other
    may match. Otherwise files named <name>-NNNNN-of-MMMMM must have every index 0..MMMMM-1 of
    one MMMMM. Other names are read as they are, with a line on stderr saying so. Returns the
    files' sizes when they were read for the check, else None.
    """
    names = [os.path.basename(f) for f in files]
    listed = (read_dataset_info(data_dir) or {}).get("shards") or {}
    listed = {n: int(c) for n, c in listed.items()
              if "/" not in pattern and fnmatch.fnmatchcase(n, pattern)}
    if listed:
        missing = sorted(set(listed) - set(names))
        if missing:
            raise _incomplete(data_dir, f"dataset_info.json lists {len(listed)} shards matching "
                              f"{pattern!r} but {len(missing)} are missing: {_some(missing)}")
        extra = sorted(set(names) - set(listed))
        if extra:
            raise _incomplete(data_dir, f"{_some(extra)} match {pattern!r} but are not among the "
                              "shards dataset_info.json lists (files of another conversion?)")
        sizes = bad_records.file_sizes(files)
        empty = [n for n, size in zip(names, sizes) if size == 0 and listed[n] > 0]
        if empty:
            raise _incomplete(data_dir, f"shards {_some(empty)} are empty but dataset_info.json "
                              "says they hold records")
        return sizes
    groups: dict[str, dict[str, set[int]]] = {}  # name -> MMMMM -> indices
    other = []
    for name in names:
        m = _SHARD_NAME.match(name)
        if m:
            groups.setdefault(m[1], {}).setdefault(m[3], set()).add(int(m[2]))
        else:
            other.append(name)
    for prefix, by_total in sorted(groups.items()):
        if len(by_total) > 1:
            raise _incomplete(data_dir, f"{prefix}-*-of-* files of {len(by_total)} shard counts "
                              f"({', '.join(sorted(by_total))}) are mixed")
        (total, have), = by_total.items()
        missing = [f"{prefix}-{i:0{len(total)}d}-of-{total}" for i in range(int(total))
                   if i not in have]
        if missing:
            raise _incomplete(data_dir, f"{len(missing)} of the {int(total)} {prefix} shards are "
                              f"missing: {_some(missing)}")
    if other:
        print(f"{data_dir}: no completeness check possible for {len(other)} file(s) matching "
              f"{pattern!r} (e.g. {other[0]}): no shard list in dataset_info.json and not named "
              "<name>-NNNNN-of-MMMMM; reading them as they are.", file=sys.stderr)
    else:
        print(f"{data_dir}: no shard list in dataset_info.json; the {len(names)} files matching "
              f"{pattern!r} were checked by their -NNNNN-of-MMMMM names only.", file=sys.stderr)
    return None


def read_dataset_info(data_dir: str) -> dict | None:
    """The converter's data_dir/dataset_info.json (classes, label offset, splits), if any."""
    path = os.path.join(data_dir, "dataset_info.json")
    if not tf.io.gfile.exists(path):
        return None
    with tf.io.gfile.GFile(path) as f:
        return json.load(f)


def check_dataset_info(config: DataConfig) -> None:
    """ValueError when the config's num_classes or label_offset contradict dataset_info.json."""
    info = read_dataset_info(config.data_dir) or {}
    for key in ("num_classes", "label_offset"):
        if key in info and info[key] != getattr(config, key):
            raise ValueError(
                f"{config.data_dir}/dataset_info.json says {key}={info[key]} but the config has "
                f"data.{key}={getattr(config, key)}; set data.{key}={info[key]} (e.g. "
                f"--override=data.{key}={info[key]}).")


def _tfrecord_source(config, files, sizes, is_train, input_context, counts, guard):
    """(encoded image, int32 label, int64 record id) per record, file-sharded per input pipeline."""
    ds = tf.data.Dataset.from_tensor_slices(
        (files, sizes or bad_records.file_sizes(files), tf.range(len(files))))
    record_shard = False
    if input_context and input_context.num_input_pipelines > 1:
        if len(files) >= input_context.num_input_pipelines:
            ds = ds.shard(input_context.num_input_pipelines, input_context.input_pipeline_id)
        else:
            record_shard = True  # too few files: every pipeline reads all, keeps its share
    if is_train:
        ds = ds.shuffle(len(files), seed=config.seed, reshuffle_each_iteration=True)
    # Vectors of up to bad_records.READ_BATCH records of one file at a time; a truncated file
    # loses its rest only.
    ds = ds.interleave(bad_records.read_tfrecord_file,
                       cycle_length=min(config.cycle_length, len(files)),
                       num_parallel_calls=AUTOTUNE,
                       deterministic=config.deterministic or not is_train)
    if record_shard:
        ds = ds.unbatch().shard(input_context.num_input_pipelines,
                                input_context.input_pipeline_id).batch(bad_records.READ_BATCH)

    def parse(serialized, ids):  # vectors of records and their ids
        features = tf.io.parse_example(serialized, tfrecord.TRAIN_FEATURES)
        label = tf.cast(features[tfrecord.LABEL], tf.int32) - config.label_offset
        return _keep_decodable(features[tfrecord.ENCODED], label, ids, counts, guard)
    ds = ds.map(parse, num_parallel_calls=AUTOTUNE, deterministic=config.deterministic or not is_train)
    return ds.unbatch()


def _tfds_source(config, is_train, input_context, counts, guard) -> tf.data.Dataset:
    """(encoded image, int32 label, int64 read position) from a prepared TFDS data dir; images
    are not decoded here."""
    import tensorflow_datasets as tfds
    name, tfds_dir = _tfds_name_and_dir(config.data_dir)
    builder = tfds.builder(name, data_dir=tfds_dir)
    read_config = tfds.ReadConfig(input_context=input_context, shuffle_seed=config.seed,
                                  interleave_cycle_length=config.cycle_length, try_autocache=False)
    ds = builder.as_dataset(
        split=_tfds_split(config, is_train), shuffle_files=is_train, read_config=read_config,
        decoders={config.tfds_image_key: tfds.decode.SkipDecoding()})
    image_key, label_key = config.tfds_image_key, config.tfds_label_key
    ds = ds.enumerate().batch(bad_records.READ_BATCH).map(
        lambda i, ex: _keep_decodable(ex[image_key], tf.cast(ex[label_key], tf.int32), i, counts,
                                      guard),
        num_parallel_calls=AUTOTUNE)
    return ds.unbatch()


def _tfds_split(config, is_train):
    return config.tfds_train_split if is_train else config.tfds_eval_split


def _keep_decodable(image_bytes, labels, ids, counts, guard):
    """The rows of (bytes [n], labels [n], ids [n]) whose bytes look decodable; the others are
    logged by the guard; counts (an int64 variable [2], or None) adds (n, rows dropped)."""
    ok = bad_records.looks_decodable(image_bytes)
    logged = tf.cond(tf.reduce_all(ok), lambda: tf.constant(True), lambda: guard.log(
        tf.boolean_mask(ids, tf.logical_not(ok)), "not an image, empty or truncated",
        count=False))
    with tf.control_dependencies([logged]):
        kept = tuple(tf.boolean_mask(t, ok) for t in (image_bytes, labels, ids))
    if counts is None:
        return kept
    n = tf.size(ok, out_type=tf.int64)
    dropped = n - tf.size(kept[1], out_type=tf.int64)
    with tf.control_dependencies([counts.assign_add(tf.stack([n, dropped]))]):
        return tuple(tf.identity(t) for t in kept)


def _synthetic(config, batch, input_context, repeat) -> tf.data.Dataset:
    """One random batch repeated (like the reference's fake_imagenet): measures the model, not I/O."""
    pipeline = input_context.input_pipeline_id if input_context else 0
    seed = tf.constant([config.seed or 0, pipeline], tf.int64)
    s = config.image_size
    images = tf.random.stateless_uniform([batch, s, s, 3], seed, 0, 256, dtype=tf.int32)
    labels = tf.random.stateless_uniform([batch], seed + 1, 0, config.num_classes, dtype=tf.int32)
    images = tf.cast(images, IMAGE_DTYPES[config.image_dtype or "float32"])
    ds = tf.data.Dataset.from_tensors((images, labels))
    return ds.repeat() if repeat else ds.repeat(max(1, math.ceil(config.synthetic_examples / batch)))


def _check_labels(label, num_classes):
    msg = ("label out of range [0, num_classes): check DataConfig.label_offset (1 for ImageNet-style "
           "1-based labels, 0 for 0-based ones) and num_classes")
    with tf.control_dependencies([tf.debugging.assert_non_negative(label, message=msg),
                                  tf.debugging.assert_less(label, num_classes, message=msg)]):
        return tf.identity(label)


def _to_dtype(images: tf.Tensor, dtype: str | None) -> tf.Tensor:
    """None (a DataConfig outside a TrainConfig, which derives it): float32."""
    dtype = dtype or "float32"
    if dtype == "uint8":
        return tf.cast(tf.round(images), tf.uint8)
    return tf.cast(images, IMAGE_DTYPES[dtype])


def build_dataset(config: DataConfig, split: str, batch_size: int,
                  input_context: tf.distribute.InputContext | None = None,
                  repeat: bool | None = None, drop_remainder: bool | None = None,
                  counts: tf.Variable | None = None) -> tf.data.Dataset:
    """Batches of (images [b, s, s, 3] of config.image_dtype, labels int32 [b]).

    batch_size is the global batch when input_context is given (per replica:
    input_context.get_per_replica_batch_size). Train: shuffled, repeated, drop_remainder=True
    (static shapes for TPU). Eval: fixed order, one pass, drop_remainder=config.eval_drop_remainder.
    Undecodable images (bad_records.looks_decodable) are dropped where the records are parsed
    (before cache, shuffle and batching, so batches stay full); `counts` (an int64 tf.Variable
    [2] on the CPU), when given, adds (records read, records dropped) there. A record that
    passes that check and still makes the decoder fail is dropped too, logged by file and
    index and counted (bad_records.RecordGuard; with drop_remainder, the rest of its batch is
    left out with it).
    With config.seed the stream depends on that seed alone: the ops are made under TensorFlow's
    global seed set to it (data.seeding), whatever global seed the process holds.
    """
    with seeding.tf_global_seed(config.seed):
        return _build_dataset(config, split, batch_size, input_context, repeat, drop_remainder,
                              counts)


def _build_dataset(config, split, batch_size, input_context, repeat, drop_remainder, counts):
    is_train = _split(split) == "train"
    repeat = is_train if repeat is None else repeat
    if drop_remainder is None:
        drop_remainder = True if is_train else config.eval_drop_remainder
    batch = input_context.get_per_replica_batch_size(batch_size) if input_context else batch_size
    if batch <= 0:
        raise ValueError(f"batch size per replica must be positive, got {batch}")
    if config.image_size is None:
        raise ValueError("DataConfig.image_size is not set: give the model's resolution "
                         "(a TrainConfig fills it in from the model).")
    if config.synthetic:
        return _synthetic(config, batch, input_context, repeat)
    if not config.data_dir:
        raise ValueError("DataConfig.data_dir is empty: give a TFRecord folder, 'tfds:<name>' or "
                         "set synthetic=True")

    check_labels = lambda labels: _check_labels(labels, config.num_classes)  # noqa: E731
    if config.data_dir.startswith("tfds:"):
        guard = bad_records.RecordGuard(
            [f"{config.data_dir} ({_tfds_split(config, is_train)}, in read order)"], counts,
            check_labels, count_repeats=not config.cache)
        ds = _tfds_source(config, is_train, input_context, counts, guard)
    else:
        check_dataset_info(config)
        files, sizes = _checked_files(config, split)
        guard = bad_records.RecordGuard(files, counts, check_labels,
                                        count_repeats=not config.cache)
        ds = _tfrecord_source(config, files, sizes, is_train, input_context, counts, guard)
    if config.cache:
        ds = ds.cache()
    seed = config.seed
    if seed is not None and input_context is not None:
        seed += 1000003 * input_context.input_pipeline_id  # different stream per pipeline
    if is_train:
        ds = ds.shuffle(config.shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()

    size = config.image_size
    if is_train:
        stateless = config.deterministic and seed is not None
        if stateless:  # one seed pair per element: reproducible crops and flips
            ds = tf.data.Dataset.zip((ds, tf.data.Dataset.random(seed).batch(2)))
            ds = ds.map(lambda elem, s: (*elem, s))

        def decode(image, elem_seed):
            return preprocessing.preprocess_for_train(
                image, size, config.augment_name, config.randaug_num_layers,
                config.randaug_magnitude, config.resize_method, seed=elem_seed,
                min_crop_area=config.min_crop_area, random_flip=config.random_flip,
                crop_padding=config.crop_padding)
    else:
        def decode(image, elem_seed):
            return preprocessing.preprocess_for_eval(image, size, config.crop_padding,
                                                     config.resize_method)

    def preprocess(image, label, elem_seed=None):
        return _to_dtype(decode(image, elem_seed), config.image_dtype), label

    # A record the decoder fails on is dropped, logged and counted (bad_records.RecordGuard).
    ds = guard.decode_batches(ds, preprocess, batch, drop_remainder, config.num_parallel_calls)
    deterministic = config.deterministic or not is_train
    ds = ds.prefetch(AUTOTUNE)
    options = tf.data.Options()
    options.deterministic = deterministic
    options.experimental_optimization.map_parallelization = True
    return ds.with_options(options)


def count_examples(config: DataConfig, split: str) -> int:
    """Examples in a split: dataset_info.json from the converter, TFDS metadata, or a record count."""
    is_train = _split(split) == "train"
    if config.synthetic:
        return config.synthetic_examples
    if config.data_dir.startswith("tfds:"):
        import tensorflow_datasets as tfds
        name, tfds_dir = _tfds_name_and_dir(config.data_dir)
        info = tfds.builder(name, data_dir=tfds_dir).info
        tfds_split = config.tfds_train_split if is_train else config.tfds_eval_split
        if tfds_split not in info.splits:
            raise ValueError(f"TFDS data set {name!r} has no prepared split {tfds_split!r} (has "
                             f"{list(info.splits)}); prepare it or set tfds_train/eval_split")
        return info.splits[tfds_split].num_examples
    pattern = config.train_file_pattern if is_train else config.eval_file_pattern
    splits = (read_dataset_info(config.data_dir) or {}).get("splits", {})
    if splits:
        for entry in splits.values():
            if entry.get("file_pattern") == pattern:
                return int(entry["num_examples"])
    ds = tf.data.TFRecordDataset(list_files(config, split))
    return int(ds.reduce(tf.constant(0, tf.int64), lambda n, _: n + 1))
