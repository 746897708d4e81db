r"""Image folders or IDX files -> sharded TFRecords in the TPU reference's format.

    python -m efficientnet_tf.data.convert --idx_dir=/usr/share/datasets/fashion-mnist \
        --output_dir=/tmp/fmnist
    python -m efficientnet_tf.data.convert --train_dir=train/ --validation_dir=val/ \
        --validation_labels=val_labels.txt --output_dir=gs://bucket/imagenet \
        --train_shards=1024 --validation_shards=128

Output: train-00000-of-NNNNN, validation-00000-of-NNNNN, labels.txt (one synset per line, in
label order), labels.json and dataset_info.json (example counts, label offset, every shard's
name and record count). Stored labels are 1-based like ImageNet's files (read them with
label_offset=1).

Good RGB JPEGs are stored byte for byte; PNG/GIF/BMP/WebP, CMYK and grayscale JPEGs and IDX
arrays are re-encoded as RGB JPEG. Unreadable images are reported and skipped; dangling links,
FIFOs and other non-regular files are reported and never opened. Images in sub-folders of a
class folder belong to that class. Each shard is written under a hidden temporary name and
renamed when complete; dataset_info.json is removed first and written last, so a folder that
has it is complete (the reader checks its shards against it).
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import gzip
import json
import os
import random
import re
import stat
import sys
import threading
import time
from typing import Sequence

import numpy as np
import tensorflow as tf

from efficientnet_tf import fileio
from efficientnet_tf.data import tfrecord

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp")
FASHION_MNIST_NAMES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                       "Sneaker", "Bag", "Ankle boot")
LABEL_OFFSET = 1  # stored label = class index + 1, as in ImageNet's TFRecords


@dataclasses.dataclass
class Item:
    """One input image: a file path, or an in-memory array (IDX)."""
    source: str
    label: int  # 0-based class index
    array: np.ndarray | None = None


@dataclasses.dataclass
class SplitSummary:
    split: str
    num_inputs: int = 0
    num_written: int = 0
    num_kept: int = 0  # JPEG bytes stored unchanged
    num_reencoded: int = 0
    bad: list[tuple[str, str]] = dataclasses.field(default_factory=list)  # incl. not_opened
    shards: list[str] = dataclasses.field(default_factory=list)
    shard_records: dict[str, int] = dataclasses.field(default_factory=dict)  # by file name
    num_not_opened: int = 0  # dangling links, FIFOs, ...: listed in bad, never opened
    num_from_subfolders: int = 0  # images found in sub-folders of a class folder
    num_ignored: int = 0  # files without an image extension
    seconds: float = 0.0


@dataclasses.dataclass
class ConversionSummary:
    output_dir: str
    num_classes: int
    splits: dict[str, SplitSummary]

    @property
    def num_bad(self) -> int:
        return sum(len(s.bad) for s in self.splits.values())

    @property
    def bad_fraction(self) -> float:
        total = sum(s.num_inputs for s in self.splits.values())
        return self.num_bad / total if total else 0.0

    def as_dict(self) -> dict:
        return {
            "output_dir": self.output_dir,
            "num_classes": self.num_classes,
            "num_bad": self.num_bad,
            "bad_fraction": round(self.bad_fraction, 6),
            "splits": {k: {"inputs": s.num_inputs, "written": s.num_written, "kept_jpeg": s.num_kept,
                           "reencoded": s.num_reencoded, "bad": len(s.bad),
                           "not_opened": s.num_not_opened, "from_subfolders": s.num_from_subfolders,
                           "ignored": s.num_ignored, "shards": len(s.shards),
                           "seconds": round(s.seconds, 2)}
                       for k, s in self.splits.items()},
        }


class ImageError(Exception):
    """An input image that cannot be converted (reason in the message)."""


# ---------------------------------------------------------------------------- encoding

def encode_image(data: bytes, quality: int = 95) -> tuple[bytes, int, int, bool]:
    """Validates one encoded image; returns (jpeg_bytes, height, width, reencoded).

    RGB JPEGs are returned unchanged; everything else becomes an RGB JPEG.
    Raises ImageError for empty, unknown, truncated or corrupt data.
    """
    if not data:
        raise ImageError("empty file")
    try:
        if data[:3] == b"\xff\xd8\xff":
            channels = int(tf.io.extract_jpeg_shape(data)[2])
            image = tf.io.decode_jpeg(data, channels=3)  # full decode: catches truncation
            if channels == 3:
                return data, int(image.shape[0]), int(image.shape[1]), False
        else:
            image = tf.io.decode_image(data, channels=3, expand_animations=False)
    except (tf.errors.InvalidArgumentError, tf.errors.UnknownError, tf.errors.OutOfRangeError,
            tf.errors.DataLossError) as e:
        raise ImageError(_short(e.message)) from None
    jpeg = tf.io.encode_jpeg(image, quality=quality).numpy()
    return jpeg, int(image.shape[0]), int(image.shape[1]), True


def encode_array(array: np.ndarray, quality: int = 95) -> bytes:
    """uint8 [h, w] or [h, w, c] -> RGB JPEG bytes."""
    if array.ndim == 2:
        array = array[..., None]
    if array.shape[-1] == 1:
        array = np.repeat(array, 3, axis=-1)
    return tf.io.encode_jpeg(array, quality=quality).numpy()


def _short(message: str) -> str:
    """First line of a TF error without the '{{function_node ...}}' and '[Op:...]' noise."""
    text = (message or "").strip().splitlines()[0] if (message or "").strip() else "decode failed"
    text = re.sub(r"\{\{[^}]*\}\}\s*", "", text)
    text = re.sub(r"\s*\[Op:\w+\]", "", text)
    return text[:200]


# ---------------------------------------------------------------------------- inputs

def read_idx(path: str) -> np.ndarray:
    """Reads an IDX file (optionally gzipped), e.g. MNIST's train-images-idx3-ubyte.gz."""
    with tf.io.gfile.GFile(path, "rb") as f:
        raw = f.read()
    if path.endswith(".gz"):
        raw = gzip.decompress(raw)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise ValueError(f"{path} is not an unsigned-byte IDX file (bad magic {raw[:4]!r})")
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise ValueError(f"{path}: header says {dims} but holds {data.size} values (truncated?)")
    return data.reshape(dims)


def _find_idx(idx_dir: str, prefix: str, kind: str) -> str:
    for name in (f"{prefix}-{kind}-ubyte.gz", f"{prefix}-{kind}-ubyte",
                 f"{prefix}-{kind}.ubyte.gz", f"{prefix}-{kind}.ubyte"):
        path = os.path.join(idx_dir, name)
        if tf.io.gfile.exists(path):
            return path
    raise ValueError(f"no {prefix}-{kind}-ubyte[.gz] in {idx_dir}: expected MNIST-style IDX files "
                     "(train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-...)")


def idx_class_names(idx_dir: str, label_names: str | Sequence[str] = "auto") -> list[str]:
    if not isinstance(label_names, str):
        return list(label_names)
    if label_names == "auto":
        label_names = "fashion_mnist" if "fashion" in os.path.abspath(idx_dir).lower() else "mnist"
    if label_names == "fashion_mnist":
        return list(FASHION_MNIST_NAMES)
    if label_names == "mnist":
        return [str(i) for i in range(10)]
    return [n.strip() for n in label_names.split(",")]


@dataclasses.dataclass
class Listing:
    """Image files under a folder, and what was left out."""
    files: list[str] = dataclasses.field(default_factory=list)
    skipped: list[tuple[str, str]] = dataclasses.field(default_factory=list)  # never opened
    from_subfolders: list[str] = dataclasses.field(default_factory=list)  # within files
    ignored: int = 0  # other extensions

    def add(self, other: "Listing") -> None:
        self.files += other.files
        self.skipped += other.skipped
        self.from_subfolders += other.from_subfolders
        self.ignored += other.ignored


def _is_local(path: str) -> bool:
    return "://" not in path


def _not_a_file(path: str) -> str | None:
    """Why a local path cannot be read as a file (without opening it), or None if it can."""
    if not _is_local(path):
        return None
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        if os.path.islink(path):
            return f"dangling symlink to {os.readlink(path)}; not opened"
        return "vanished after listing; not opened"
    except OSError as e:
        return f"cannot stat ({e.strerror}); not opened"
    if not stat.S_ISREG(mode):
        kind = ("FIFO" if stat.S_ISFIFO(mode) else "socket" if stat.S_ISSOCK(mode)
                else "device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "special file")
        return f"not a regular file ({kind}); not opened"
    if not os.access(path, os.R_OK):
        return "not readable (permission denied); not opened"
    return None


def _scan(directory: str, recursive: bool = True,
          seen: dict[str, str] | None = None) -> Listing:
    """Image files under directory (sorted; sub-folders too when recursive). Local folders
    reached twice through symlinks (`seen`: realpath -> first path) are a ValueError."""
    if seen is not None and _is_local(directory):
        real = os.path.realpath(directory)
        if real in seen:
            raise ValueError(f"{directory} and {seen[real]} are the same folder (a symlink): its "
                             "images would be read twice, maybe under two classes; remove the "
                             "link or make it a real copy")
        seen[real] = directory
    listing = Listing()
    for name in sorted(n.rstrip("/") for n in tf.io.gfile.listdir(directory)):
        path = os.path.join(directory, name)
        if tf.io.gfile.isdir(path):
            if recursive:
                sub = _scan(path, True, seen)
                sub.from_subfolders = list(sub.files)  # every file below this level
                listing.add(sub)
            continue
        if not name.lower().endswith(IMAGE_EXTENSIONS):
            listing.ignored += 1
            continue
        why = _not_a_file(path)
        if why:
            listing.skipped.append((path, why))
        else:
            listing.files.append(path)
    return listing


def _list_images(directory: str) -> tuple[list[str], int]:
    """(image files under directory, sub-folders included; number of other files)."""
    listing = _scan(directory)
    return listing.files, listing.ignored


def _class_dirs(directory: str) -> list[str]:
    return sorted(n.rstrip("/") for n in tf.io.gfile.listdir(directory)
                  if tf.io.gfile.isdir(os.path.join(directory, n)))


def _check_distinct(directory: str, classes: list[str]) -> None:
    """ValueError when two local class folders are one folder (a symlink to another class)."""
    if not _is_local(directory):
        return
    first: dict[str, str] = {}
    for cls in classes:
        real = os.path.realpath(os.path.join(directory, cls))
        if real in first:
            raise ValueError(f"class folders {first[real]!r} and {cls!r} in {directory} are the "
                             "same folder (one is a symlink to the other): its images would get "
                             "two labels; remove the link or merge the classes")
        first[real] = cls


def _folder_items(directory: str, classes: list[str]) -> tuple[list[Item], Listing]:
    index = {c: i for i, c in enumerate(classes)}
    found = _class_dirs(directory)
    _check_distinct(directory, found)
    items, total, seen = [], Listing(), {}
    for cls in found:
        if cls not in index:
            raise ValueError(f"class folder {cls!r} in {directory} is not one of the training "
                             f"classes ({len(classes)} found under the train folder)")
        listing = _scan(os.path.join(directory, cls), seen=seen)
        items += [Item(f, index[cls]) for f in listing.files]
        total.add(listing)
    return items, total


def _hold_out(items: list[Item], fraction: float, seed: int) -> tuple[list[Item], list[Item]]:
    """(train, validation): `fraction` of each class (at least one, never all) held out."""
    by_class: dict[int, list[Item]] = {}
    for it in items:
        by_class.setdefault(it.label, []).append(it)
    train, held = [], []
    for label in sorted(by_class):
        group = sorted(by_class[label], key=lambda it: it.source)
        random.Random(seed + label).shuffle(group)
        k = min(len(group) - 1, max(1, round(fraction * len(group))))
        held += group[:k]
        train += group[k:]
    return train, held


def _labelled_items(directory: str, label_file: str,
                    classes: list[str]) -> tuple[list[Item], Listing]:
    """Flat folder + label file: one synset per line (sorted file order, like ImageNet's
    validation labels) or 'filename synset' / 'filename,synset' per line. Files that cannot
    be opened keep their line and are left out."""
    listing = _scan(directory, recursive=False)
    files = sorted(listing.files + [p for p, _ in listing.skipped])
    with tf.io.gfile.GFile(label_file) as f:
        lines = [ln.strip() for ln in f if ln.strip()]
    index = {c: i for i, c in enumerate(classes)}
    pairs = [ln.replace(",", " ").split() for ln in lines]
    if all(len(p) == 1 for p in pairs):
        if len(lines) != len(files):
            raise ValueError(f"{label_file} has {len(lines)} labels but {directory} has {len(files)}"
                             " images; a one-synset-per-line file must list every image in sorted"
                             " file-name order")
        named = list(zip(files, lines))
    else:
        by_name = {p[0]: p[-1] for p in pairs}
        missing = [os.path.basename(f) for f in files if os.path.basename(f) not in by_name]
        if missing:
            raise ValueError(f"{label_file} has no label for {len(missing)} images in {directory},"
                             f" e.g. {missing[:3]}")
        named = [(f, by_name[os.path.basename(f)]) for f in files]
    unknown = sorted({s for _, s in named if s not in index})
    if unknown:
        raise ValueError(f"{label_file} uses labels that are not training classes: {unknown[:5]}")
    skipped = {p for p, _ in listing.skipped}
    return [Item(f, index[s]) for f, s in named if f not in skipped], listing


# ---------------------------------------------------------------------------- writing

class _Progress:
    def __init__(self, split: str, total: int, enabled: bool):
        self.split, self.total, self.enabled = split, total, enabled
        self.done, self.start = 0, time.time()
        self.last = self.start
        self.lock = threading.Lock()
        self.tty = sys.stderr.isatty()

    def update(self, n: int = 1) -> None:
        with self.lock:
            self.done += n
            now = time.time()
            final = self.done >= self.total
            if not self.enabled or (now - self.last < (0.5 if self.tty else 10.0) and not final):
                return
            self.last = now
            rate = self.done / max(now - self.start, 1e-9)
            eta = (self.total - self.done) / rate if rate > 0 else 0
            line = (f"{self.split}: {self.done}/{self.total} ({100 * self.done / self.total:.0f}%)"
                    f" {rate:.0f} img/s, eta {eta:.0f} s")
            sys.stderr.write(("\r" + line + ("\n" if final else "")) if self.tty else line + "\n")
            sys.stderr.flush()


def _shard_names(split: str, num_shards: int) -> list[str]:
    return [f"{split}-{i:05d}-of-{num_shards:05d}" for i in range(num_shards)]


def _tmp_path(output_dir: str, name: str) -> str:
    # Hidden name: never matched by the reader's "train-*" patterns.
    return os.path.join(output_dir, f".tmp-{name}")


def _convert_item(item: Item, classes: list[str], quality: int) -> tuple[tf.train.Example, bool]:
    if item.array is not None:
        data, (h, w), reencoded = encode_array(item.array, quality), item.array.shape[:2], True
    else:
        try:
            with tf.io.gfile.GFile(item.source, "rb") as f:
                raw = f.read()
        except tf.errors.OpError as e:  # gone or unreadable since it was listed
            raise ImageError(f"cannot read: {_short(e.message)}") from None
        data, h, w, reencoded = encode_image(raw, quality)
    example = tfrecord.make_example(data, item.label + LABEL_OFFSET, h, w, synset=classes[item.label],
                                    filename=os.path.basename(item.source))
    return example, reencoded


class _Stopped(Exception):
    """Another shard failed: this one stops unfinished."""


def _write_shard(items: list[Item], path: str, tmp: str, classes: list[str], quality: int,
                 summary: SplitSummary, lock: threading.Lock, progress: _Progress,
                 stop: threading.Event) -> int:
    """Writes one shard under tmp, renames it to path; returns its record count."""
    written = 0
    try:
        with tf.io.TFRecordWriter(tmp) as writer:
            for item in items:
                if stop.is_set():
                    raise _Stopped(path)
                try:
                    example, reencoded = _convert_item(item, classes, quality)
                except ImageError as e:
                    with lock:
                        summary.bad.append((item.source, str(e)))
                    progress.update()
                    continue
                writer.write(example.SerializeToString())
                written += 1
                with lock:
                    summary.num_written += 1
                    summary.num_reencoded += int(reencoded)
                    summary.num_kept += int(not reencoded)
                progress.update()
        tf.io.gfile.rename(tmp, path, overwrite=True)
    except BaseException:
        stop.set()
        if tf.io.gfile.exists(tmp):
            tf.io.gfile.remove(tmp)
        raise
    return written


def _stale_files(output_dir: str, split: str, names: list[str], overwrite: bool) -> list[str]:
    """Other split-* files in output_dir; ValueError unless overwrite."""
    stale = [n for n in tf.io.gfile.glob(os.path.join(output_dir, f"{split}-*"))
             if os.path.basename(n) not in names]
    if stale and not overwrite:
        raise ValueError(f"{output_dir} already holds {len(stale)} other {split}-* files (e.g. "
                         f"{os.path.basename(stale[0])}) that a reader would mix with the new ones;"
                         " remove them or pass overwrite=True (--overwrite)")
    return stale


def write_split(items: list[Item], output_dir: str, split: str, num_shards: int, classes: list[str],
                quality: int = 95, num_workers: int = 4, progress: bool = True,
                overwrite: bool = False) -> SplitSummary:
    """Writes items in the given order to `num_shards` contiguous shards, in parallel."""
    num_shards = max(1, min(num_shards, len(items)))
    names = _shard_names(split, num_shards)
    stale = _stale_files(output_dir, split, names, overwrite)
    for path in stale + tf.io.gfile.glob(os.path.join(output_dir, f".tmp-{split}-*")):
        tf.io.gfile.remove(path)
    summary = SplitSummary(split, num_inputs=len(items))
    lock, bar = threading.Lock(), _Progress(split, len(items), progress)
    start = time.time()
    bounds = [len(items) * i // num_shards for i in range(num_shards + 1)]
    pool, stop = concurrent.futures.ThreadPoolExecutor(max(1, num_workers)), threading.Event()
    try:
        futures = [pool.submit(_write_shard, items[bounds[i]:bounds[i + 1]],
                               os.path.join(output_dir, name), _tmp_path(output_dir, name),
                               classes, quality, summary, lock, bar, stop)
                   for i, name in enumerate(names)]
        concurrent.futures.wait(futures)
        errors = [f.exception() for f in futures if f.exception()]
        if errors:  # the first real failure, not the shards it stopped
            raise next((e for e in errors if not isinstance(e, _Stopped)), errors[0])
        counts = [f.result() for f in futures]
    finally:
        stop.set()  # after a failure or an interrupt: no shard goes on or starts
        pool.shutdown(wait=True, cancel_futures=True)
    summary.shards = [os.path.join(output_dir, n) for n in names]
    summary.shard_records = dict(zip(names, counts))
    summary.seconds = time.time() - start
    return summary


def _write_metadata(output_dir: str, classes: list[str], names: list[str] | None,
                    splits: dict[str, SplitSummary]) -> None:
    names = names or classes
    fileio.write_file(os.path.join(output_dir, "labels.txt"), "".join(c + "\n" for c in classes))
    fileio.write_file(os.path.join(output_dir, "labels.json"), json.dumps({
        "label_offset": LABEL_OFFSET,
        "classes": [{"index": i, "stored_label": i + LABEL_OFFSET, "synset": c, "name": n}
                    for i, (c, n) in enumerate(zip(classes, names))]}, indent=1))
    fileio.write_file(os.path.join(output_dir, "dataset_info.json"), json.dumps({
        "num_classes": len(classes), "label_offset": LABEL_OFFSET,
        "splits": {k: {"num_examples": s.num_written, "num_shards": len(s.shards),
                       "file_pattern": f"{k}-*"} for k, s in splits.items()},
        "shards": {n: c for s in splits.values() for n, c in s.shard_records.items()}}, indent=1))


def _finish(output_dir, classes, names, items_by_split, shards, seed, limit, quality,
            num_workers, progress, overwrite, listings=None) -> ConversionSummary:
    tf.io.gfile.makedirs(output_dir)
    for split, items in items_by_split.items():
        if split == "train":
            random.Random(seed).shuffle(items)
        if limit:
            items_by_split[split] = items = items[:limit]
        if not items:
            raise ValueError(f"no images found for the {split} split")
        count = max(1, min(shards[split], len(items)))
        _stale_files(output_dir, split, _shard_names(split, count), overwrite)
    # Removed before the first shard is touched, written after the last: a folder with it is
    # complete.
    info = os.path.join(output_dir, "dataset_info.json")
    if tf.io.gfile.exists(info):
        tf.io.gfile.remove(info)
    listings = listings or {}
    nested = {p for listing in listings.values() for p in listing.from_subfolders}
    splits = {}
    for split, items in items_by_split.items():
        summary = write_split(items, output_dir, split, shards[split], classes, quality,
                              num_workers, progress, overwrite)
        listing = listings.get(split)
        if listing:
            summary.bad = listing.skipped + summary.bad
            summary.num_inputs += len(listing.skipped)
            summary.num_not_opened = len(listing.skipped)
            summary.num_ignored = listing.ignored
        summary.num_from_subfolders = sum(it.source in nested for it in items)
        splits[split] = summary
    _write_metadata(output_dir, classes, names, splits)
    return ConversionSummary(output_dir, len(classes), splits)


def convert_idx(idx_dir: str, output_dir: str, *, train_shards: int = 16,
                validation_shards: int = 4, label_names: str | Sequence[str] = "auto",
                max_examples: int | None = None, seed: int = 12345, quality: int = 95,
                num_workers: int = 4, progress: bool = True,
                overwrite: bool = False) -> ConversionSummary:
    """MNIST-style IDX files (train-*, t10k-*) -> train-* and validation-* TFRecords."""
    items = {}
    for split, prefix in (("train", "train"), ("validation", "t10k")):
        images = read_idx(_find_idx(idx_dir, prefix, "images-idx3"))
        labels = read_idx(_find_idx(idx_dir, prefix, "labels-idx1"))
        if len(images) != len(labels):
            raise ValueError(f"{prefix}: {len(images)} images but {len(labels)} labels")
        items[split] = [Item(f"{prefix}-{i:05d}.jpg", int(lab), img)
                        for i, (img, lab) in enumerate(zip(images, labels))]
    names = idx_class_names(idx_dir, label_names)
    num_classes = max(it.label for its in items.values() for it in its) + 1
    if len(names) < num_classes:
        raise ValueError(f"{len(names)} label names given for {num_classes} classes")
    synsets = [n.lower().replace("/", "_").replace(" ", "_") for n in names]
    return _finish(output_dir, synsets, names, items,
                   {"train": train_shards, "validation": validation_shards}, seed, max_examples,
                   quality, num_workers, progress, overwrite)


def convert_folder(train_dir: str, output_dir: str, *, validation_dir: str | None = None,
                   validation_labels: str | None = None, train_shards: int = 16,
                   validation_shards: int = 4, max_examples: int | None = None, seed: int = 12345,
                   quality: int = 95, num_workers: int = 4, progress: bool = True,
                   overwrite: bool = False, validation_fraction: float = 0.0,
                   min_classes: int = 1) -> ConversionSummary:
    """train_dir/<class>/*.jpg (+ validation_dir as class folders, or flat + a label file).
    Without validation_dir, validation_fraction > 0 holds out that share of each class (at least
    one image, seeded) as the validation split."""
    if not tf.io.gfile.isdir(train_dir):
        raise ValueError(f"train folder {train_dir} does not exist")
    classes = _class_dirs(train_dir)
    if not classes:
        raise ValueError(f"{train_dir} has no class sub-folders (expected {train_dir}/<class>/*.jpg)")
    if len(classes) < min_classes:
        raise ValueError(f"{train_dir} has {len(classes)} class folder(s) ({', '.join(classes)}); "
                         f"a classifier needs at least {min_classes}: one sub-folder per class.")
    items, listings = {}, {}
    items["train"], listings["train"] = _folder_items(train_dir, classes)
    if not items["train"]:
        skipped = "".join(f"; not opened: {p} ({why})" for p, why in listings["train"].skipped[:5])
        raise ValueError(f"no images in the class folders of {train_dir} (extensions: "
                         f"{', '.join(IMAGE_EXTENSIONS)}){skipped}")
    if validation_fraction and not validation_dir:
        items["train"], items["validation"] = _hold_out(items["train"], validation_fraction, seed)
    shards = {"train": train_shards, "validation": validation_shards}
    if validation_dir:
        if validation_labels:
            items["validation"], listings["validation"] = _labelled_items(
                validation_dir, validation_labels, classes)
        elif _class_dirs(validation_dir):
            items["validation"], listings["validation"] = _folder_items(validation_dir, classes)
        else:
            raise ValueError(f"{validation_dir} has no class sub-folders; give a label file "
                             "(--validation_labels) for a flat validation folder")
    return _finish(output_dir, classes, None, items, shards, seed, max_examples, quality,
                   num_workers, progress, overwrite, listings)


# ---------------------------------------------------------------------------- CLI

def _define_flags() -> None:
    from absl import flags
    flags.DEFINE_string("output_dir", None, "Where to write the TFRecord shards.")
    flags.DEFINE_string("train_dir", None, "Folder of class sub-folders (ImageNet train layout).")
    flags.DEFINE_string("validation_dir", None, "Validation images: class sub-folders, or a flat "
                        "folder with --validation_labels.")
    flags.DEFINE_string("validation_labels", None, "Label file for a flat validation folder: one "
                        "synset per line in sorted file order, or 'filename synset' lines.")
    flags.DEFINE_string("idx_dir", None, "Folder with MNIST-style IDX files (train-*, t10k-*).")
    flags.DEFINE_string("label_names", "auto", "IDX class names: auto, fashion_mnist, mnist or a "
                        "comma-separated list.")
    flags.DEFINE_integer("train_shards", 16, "Number of train shards (ImageNet: 1024).")
    flags.DEFINE_integer("validation_shards", 4, "Number of validation shards (ImageNet: 128).")
    flags.DEFINE_integer("max_examples", None, "Convert at most this many images per split.")
    flags.DEFINE_integer("seed", 12345, "Seed of the train shuffle (output is deterministic).")
    flags.DEFINE_integer("quality", 95, "JPEG quality for re-encoded images.")
    flags.DEFINE_integer("num_workers", min(8, os.cpu_count() or 1), "Parallel shard writers.")
    flags.DEFINE_float("max_bad_fraction", 0.001, "Exit non-zero when a larger fraction of the "
                       "input images could not be read.")
    flags.DEFINE_bool("overwrite", False, "Delete other existing shards of the same split.")
    flags.DEFINE_bool("progress", True, "Show progress on stderr.")


def _main(argv: list[str]) -> int:
    from absl import app, flags
    FLAGS = flags.FLAGS
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not FLAGS.output_dir or bool(FLAGS.idx_dir) == bool(FLAGS.train_dir):
        raise app.UsageError("give --output_dir and exactly one of --idx_dir or --train_dir")
    common = dict(train_shards=FLAGS.train_shards, validation_shards=FLAGS.validation_shards,
                  max_examples=FLAGS.max_examples, seed=FLAGS.seed, quality=FLAGS.quality,
                  num_workers=FLAGS.num_workers, progress=FLAGS.progress, overwrite=FLAGS.overwrite)
    try:
        if FLAGS.idx_dir:
            summary = convert_idx(FLAGS.idx_dir, FLAGS.output_dir, label_names=FLAGS.label_names,
                                  **common)
        else:
            summary = convert_folder(FLAGS.train_dir, FLAGS.output_dir,
                                     validation_dir=FLAGS.validation_dir,
                                     validation_labels=FLAGS.validation_labels, **common)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for split in summary.splits.values():
        for path, reason in split.bad:
            print(f"bad image skipped: {path}: {reason}", file=sys.stderr)
    print(json.dumps(summary.as_dict(), indent=1))
    if summary.bad_fraction > FLAGS.max_bad_fraction:
        print(f"error: {summary.num_bad} images ({summary.bad_fraction:.2%}) could not be read, more"
              f" than --max_bad_fraction={FLAGS.max_bad_fraction}", file=sys.stderr)
        return 1
    return 0


def entry():
    from efficientnet_tf import cli

    _define_flags()
    cli.run(lambda argv: sys.exit(_main(argv)), __name__)


if __name__ == "__main__":
    entry()
