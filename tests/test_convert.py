"""Converter: real Fashion-MNIST and real photos (scikit-image) -> TFRecords -> read back."""
import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image
from skimage import data

from efficientnet_tf.data import convert, tfrecord

from fmnist import FMNIST, needs

needs_fmnist = needs


def _records(pattern):
    files = sorted(tf.io.gfile.glob(pattern))
    return [tfrecord.parse_example(r, all_features=True) for r in tf.data.TFRecordDataset(files)]


def _source(root, name):
    return next(p for p in root.rglob(name))


def _save(array, path, fmt, mode=None, **kw):
    image = Image.fromarray(array)
    if mode:
        image = image.convert(mode)
    image.save(path, fmt, **kw)


@pytest.fixture(scope="module")
def photo_dirs(tmp_path_factory):
    """train/<class>/ with RGB JPEG, CMYK JPEG, PNG, grayscale JPEG, a truncated JPEG, a text file;
    flat val/ with a one-synset-per-line label file (ImageNet validation layout)."""
    root = tmp_path_factory.mktemp("photos")
    train, val = root / "train", root / "val"
    for d in ("n01_person", "n02_coffee", "n03_cat", "n04_camera"):
        (train / d).mkdir(parents=True)
    val.mkdir()
    astronaut, coffee, chelsea, camera = data.astronaut(), data.coffee(), data.chelsea(), data.camera()
    _save(astronaut, train / "n01_person" / "astronaut.jpg", "JPEG", quality=92)
    _save(astronaut[::2, ::2], train / "n01_person" / "astronaut_cmyk.jpg", "JPEG", "CMYK", quality=95)
    _save(coffee, train / "n02_coffee" / "coffee.jpg", "JPEG", quality=92)
    _save(chelsea, train / "n03_cat" / "chelsea.png", "PNG")
    _save(camera, train / "n04_camera" / "camera_gray.jpg", "JPEG", quality=95)
    good = (train / "n02_coffee" / "coffee.jpg").read_bytes()
    (train / "n04_camera" / "truncated.jpg").write_bytes(good[: len(good) // 2])
    (train / "n03_cat" / "notes.txt").write_text("not an image")
    _save(coffee[::2, ::2], val / "v1.jpg", "JPEG", quality=90)
    _save(chelsea[::2, ::2], val / "v2.png", "PNG")
    (root / "val_labels.txt").write_text("n02_coffee\nn03_cat\n")
    # What a reader sees in each source file (PIL decode, as RGB).
    originals = {p.name: np.asarray(Image.open(p).convert("RGB"))
                 for p in list(train.glob("*/*")) + list(val.glob("*"))
                 if p.suffix in (".jpg", ".png") and p.name != "truncated.jpg"}
    return root, originals


@needs_fmnist
def test_fashion_mnist_round_trip(tmp_path):
    out = str(tmp_path / "fm")
    summary = convert.convert_idx(FMNIST, out, max_examples=300, train_shards=3,
                                  validation_shards=2, progress=False)
    assert summary.splits["train"].num_written == 300 and summary.num_bad == 0
    assert sorted(os.listdir(out)) == sorted(
        ["dataset_info.json", "labels.json", "labels.txt"]
        + [f"train-0000{i}-of-00003" for i in range(3)]
        + [f"validation-0000{i}-of-00002" for i in range(2)])
    images = {p: convert.read_idx(f"{FMNIST}/{p}-images-idx3-ubyte.gz") for p in ("train", "t10k")}
    labels = {p: convert.read_idx(f"{FMNIST}/{p}-labels-idx1-ubyte.gz") for p in ("train", "t10k")}
    names = json.load(open(f"{out}/labels.json"))["classes"]
    assert [c["name"] for c in names] == list(convert.FASHION_MNIST_NAMES)
    assert open(f"{out}/labels.txt").read().splitlines()[9] == "ankle_boot"
    for split, prefix in (("train", "train"), ("validation", "t10k")):
        records = _records(f"{out}/{split}-*")
        assert len(records) == 300
        indices = [int(r["image/filename"].numpy()[len(prefix) + 1:-4]) for r in records]
        if split == "validation":
            assert indices == list(range(300))  # kept in order, first 300
        else:
            assert indices != sorted(indices) and len(set(indices)) == 300  # shuffled subset
        errors = []
        for r, i in zip(records, indices):
            assert int(r["image/class/label"]) == labels[prefix][i] + 1  # stored 1-based
            assert r["image/class/synset"].numpy().decode() == names[labels[prefix][i]]["synset"]
            pixels = tf.io.decode_jpeg(r["image/encoded"]).numpy()
            assert pixels.shape == (28, 28, 3) and (int(r["image/height"]), int(r["image/width"])) == (28, 28)
            errors.append(np.abs(pixels.astype(int) - images[prefix][i][..., None]).mean())
        assert np.mean(errors) < 2.5 and np.max(errors) < 6  # JPEG q95 of 28x28 gray
    info = json.load(open(f"{out}/dataset_info.json"))
    assert info["splits"]["train"]["num_examples"] == 300 and info["label_offset"] == 1


def test_photo_folder_round_trip(photo_dirs, tmp_path):
    root, originals = photo_dirs
    out = str(tmp_path / "photos")
    summary = convert.convert_folder(str(root / "train"), out, validation_dir=str(root / "val"),
                                     validation_labels=str(root / "val_labels.txt"),
                                     train_shards=2, validation_shards=1, progress=False)
    train = summary.splits["train"]
    assert (train.num_inputs, train.num_written, train.num_kept, train.num_reencoded) == (6, 5, 2, 3)
    assert [os.path.basename(p) for p, _ in train.bad] == ["truncated.jpg"]
    assert "JPEG" in train.bad[0][1] or "jpeg" in train.bad[0][1]
    classes = ["n01_person", "n02_coffee", "n03_cat", "n04_camera"]
    assert open(f"{out}/labels.txt").read().split() == classes
    seen = {}
    for split in ("train", "validation"):
        for r in _records(f"{out}/{split}-*"):
            name = r["image/filename"].numpy().decode()
            raw = r["image/encoded"].numpy()
            assert tf.io.is_jpeg(raw) and int(tf.io.extract_jpeg_shape(raw)[2]) == 3
            pixels = tf.io.decode_jpeg(raw).numpy()
            ref = originals[name]
            assert pixels.shape == ref.shape
            assert (int(r["image/height"]), int(r["image/width"])) == ref.shape[:2]
            err = np.abs(pixels.astype(float) - ref).mean()
            if raw[:4] == open(_source(root, name), "rb").read(4) and name.endswith(".jpg") \
                    and "cmyk" not in name and "gray" not in name:
                assert err < 2.0, name  # kept: only IDCT differences between decoders
            else:  # re-encoded: one q95 4:2:0 generation of what a decoder sees in the source
                once = tf.io.decode_jpeg(tf.io.encode_jpeg(ref, quality=95)).numpy()
                # (< 2.5: PIL and TF also convert CMYK to RGB about 1 level apart)
                assert np.abs(pixels.astype(float) - once).mean() < 2.5, name
                assert err < 5.0, name
            synset = r["image/class/synset"].numpy().decode()
            assert int(r["image/class/label"]) == classes.index(synset) + 1
            seen[name] = (split, synset, raw)
    assert seen["v1.jpg"][:2] == ("validation", "n02_coffee")
    assert seen["v2.png"][:2] == ("validation", "n03_cat")
    assert seen["camera_gray.jpg"][1] == "n04_camera"
    # good RGB JPEGs are stored byte for byte; everything else is re-encoded
    for name in ("astronaut.jpg", "coffee.jpg", "v1.jpg"):
        folder = "val" if name == "v1.jpg" else f"train/{seen[name][1]}"
        assert seen[name][2] == (root / folder / name).read_bytes()
    for name, folder in (("astronaut_cmyk.jpg", "train/n01_person"), ("camera_gray.jpg", "train/n04_camera")):
        assert seen[name][2] != (root / folder / name).read_bytes()
    gray = tf.io.decode_jpeg(seen["camera_gray.jpg"][2]).numpy().astype(int)
    assert np.abs(gray[..., 0] - gray[..., 2]).max() <= 2  # gray stays gray in RGB


@needs_fmnist
def test_same_seed_same_bytes_other_seed_other_order(tmp_path):
    def run(name, seed, workers):
        out = str(tmp_path / name)
        convert.convert_idx(FMNIST, out, max_examples=60, train_shards=3, validation_shards=1,
                            seed=seed, num_workers=workers, progress=False)
        return [open(f"{out}/train-0000{i}-of-00003", "rb").read() for i in range(3)]
    a, b, c = run("a", 1, 1), run("b", 1, 3), run("c", 2, 2)
    assert a == b
    assert a != c


@needs_fmnist
def test_crash_leaves_no_partial_shard_under_final_name(tmp_path, monkeypatch):
    real, calls = convert._convert_item, []

    def crashing(*args):
        calls.append(1)
        if len(calls) == 25:
            raise KeyboardInterrupt("simulated crash")
        return real(*args)
    monkeypatch.setattr(convert, "_convert_item", crashing)
    out = tmp_path / "crash"
    with pytest.raises(KeyboardInterrupt):
        convert.convert_idx(FMNIST, str(out), max_examples=40, train_shards=1, progress=False,
                            num_workers=1)
    assert len(calls) == 25
    assert not [n for n in os.listdir(out) if n.startswith(("train-", ".tmp"))]
    assert not (out / "dataset_info.json").exists()


@needs_fmnist
def test_other_shard_count_in_output_dir_is_refused_unless_overwrite(tmp_path):
    out = str(tmp_path / "o")
    convert.convert_idx(FMNIST, out, max_examples=20, train_shards=2, progress=False)
    with pytest.raises(ValueError, match="overwrite"):
        convert.convert_idx(FMNIST, out, max_examples=20, train_shards=4, progress=False)
    convert.convert_idx(FMNIST, out, max_examples=20, train_shards=4, progress=False, overwrite=True)
    assert len(tf.io.gfile.glob(f"{out}/train-*")) == 4


def test_validation_label_file_mismatch_is_a_clear_error(photo_dirs, tmp_path):
    root, _ = photo_dirs
    labels = tmp_path / "short.txt"
    labels.write_text("n02_coffee\n")
    with pytest.raises(ValueError, match="2 images"):
        convert.convert_folder(str(root / "train"), str(tmp_path / "x"),
                               validation_dir=str(root / "val"), validation_labels=str(labels),
                               progress=False)


def test_importing_defines_no_flags():
    from absl import flags
    assert "idx_dir" not in flags.FLAGS and "max_bad_fraction" not in flags.FLAGS


def test_cli_reports_bad_files_and_fails_above_max_bad_fraction(photo_dirs, tmp_path):
    root, _ = photo_dirs
    out = tmp_path / "cli"
    cmd = [sys.executable, "-m", "efficientnet_tf.data.convert", f"--train_dir={root / 'train'}",
           f"--output_dir={out}", "--train_shards=2", "--max_bad_fraction=0.1", "--num_workers=2"]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "truncated.jpg" in proc.stderr and "max_bad_fraction" in proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["num_bad"] == 1 and summary["splits"]["train"]["written"] == 5
    assert len(tf.io.gfile.glob(f"{out}/train-*")) == 2


def _tiny_jpeg(path, seed=0, fmt="JPEG"):
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, fmt)


def test_cli_lists_and_skips_dangling_links_fifos_and_unreadable_files_without_opening_them(
        tmp_path):
    """A FIFO opened for reading blocks until a writer comes: before this check the converter
    hung on one; a dangling link stopped the whole run with NotFoundError."""
    train = tmp_path / "train"
    for i in range(2):
        _tiny_jpeg(train / "a" / f"{i}.jpg", i)
        _tiny_jpeg(train / "b" / f"{i}.jpg", 10 + i)
    os.symlink(tmp_path / "gone.jpg", train / "a" / "dangling.jpg")
    os.mkfifo(train / "a" / "fifo.jpg")
    os.symlink("loop.jpg", train / "b" / "loop.jpg")  # a link to itself: listed, cannot be read
    _tiny_jpeg(train / "b" / "locked.jpg", 20)
    os.chmod(train / "b" / "locked.jpg", 0)
    root = os.geteuid() == 0  # root reads a mode-000 file anyway
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "efficientnet_tf.data.convert", f"--train_dir={train}",
           f"--output_dir={out}", "--train_shards=2", "--max_bad_fraction=1", "--num_workers=1",
           "--progress=false"]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    not_opened = {"dangling.jpg": "dangling symlink", "fifo.jpg": "not a regular file (FIFO)",
                  "loop.jpg": "cannot stat"}
    if not root:
        not_opened["locked.jpg"] = "permission denied"
    for name, why in not_opened.items():
        line = next(ln for ln in proc.stderr.splitlines() if name in ln)
        assert line.startswith("bad image skipped:") and why in line, line
    summary = json.loads(proc.stdout)["splits"]["train"]
    assert summary["not_opened"] == summary["bad"] == len(not_opened)
    assert summary["written"] == 4 + root and summary["inputs"] == 4 + 1 + 3
    info = json.load(open(out / "dataset_info.json"))
    assert sum(info["shards"].values()) == 4 + root


def test_webp_and_images_in_nested_sub_folders_are_included_and_counted(tmp_path):
    train = tmp_path / "train"
    _tiny_jpeg(train / "a" / "top.jpg", 1)
    _tiny_jpeg(train / "a" / "2019" / "summer" / "deep.webp", 2, "WEBP")
    _tiny_jpeg(train / "b" / "top.png", 3, "PNG")
    _tiny_jpeg(train / "b" / "more" / "nested.jpg", 4)
    (train / "b" / "more" / "notes.txt").write_text("not an image")
    webp_bytes = (train / "a" / "2019" / "summer" / "deep.webp").read_bytes()
    assert tf.io.decode_image(webp_bytes, expand_animations=False).shape == (8, 8, 3)
    summary = convert.convert_folder(str(train), str(tmp_path / "out"), train_shards=1,
                                     progress=False)
    s = summary.splits["train"]
    assert (s.num_written, s.num_from_subfolders, s.num_ignored, s.bad) == (4, 2, 1, [])
    assert summary.as_dict()["splits"]["train"]["from_subfolders"] == 2
    records = {r["image/filename"].numpy().decode(): r for r in _records(f"{tmp_path}/out/train-*")}
    assert sorted(records) == ["deep.webp", "nested.jpg", "top.jpg", "top.png"]
    webp = records["deep.webp"]
    assert webp["image/class/synset"].numpy() == b"a" and int(webp["image/class/label"]) == 1
    assert tf.io.decode_jpeg(webp["image/encoded"]).shape == (8, 8, 3)  # re-encoded as JPEG


def test_a_class_folder_that_links_to_another_class_is_refused(tmp_path):
    train = tmp_path / "train"
    _tiny_jpeg(train / "cat" / "1.jpg")
    _tiny_jpeg(train / "dog" / "1.jpg", 1)
    os.symlink(train / "cat", train / "kitten")
    with pytest.raises(ValueError, match="'cat' and 'kitten' .* same folder"):
        convert.convert_folder(str(train), str(tmp_path / "out"), progress=False)
    assert not (tmp_path / "out").exists()  # refused before writing anything
    os.remove(train / "kitten")
    os.symlink(train / "dog", train / "cat" / "dogs")  # a sub-folder linking to another class
    with pytest.raises(ValueError, match="dog .* same folder"):
        convert.convert_folder(str(train), str(tmp_path / "out"), progress=False)


def test_dataset_info_lists_every_shard_and_is_removed_first_and_written_last(tmp_path,
                                                                              monkeypatch):
    train = tmp_path / "train"
    for i in range(6):
        _tiny_jpeg(train / "ab"[i % 2] / f"{i}.jpg", i)
    out = tmp_path / "out"
    # Files come into place by a rename: tf.io.gfile's (shards) or os.replace (fileio's local
    # atomic writes: labels, dataset_info.json).
    renamed, real_rename, real_replace = [], tf.io.gfile.rename, os.replace
    monkeypatch.setattr(tf.io.gfile, "rename",
                        lambda a, b, overwrite=False: (renamed.append(os.path.basename(b)),
                                                       real_rename(a, b, overwrite))[1])
    monkeypatch.setattr(os, "replace", lambda a, b: (renamed.append(os.path.basename(b)),
                                                      real_replace(a, b))[1])
    convert.convert_folder(str(train), str(out), train_shards=3, validation_fraction=0.4,
                           progress=False)
    info = json.load(open(out / "dataset_info.json"))
    shards = sorted(n for n in os.listdir(out) if n.startswith(("train-", "validation-")))
    assert sorted(info["shards"]) == shards and len(shards) == 3 + 2
    for split in ("train", "validation"):
        assert sum(c for n, c in info["shards"].items() if n.startswith(split)) \
            == info["splits"][split]["num_examples"]
    assert renamed[-1] == "dataset_info.json" and set(shards) <= set(renamed[:-1])
    # A second run that dies leaves no dataset_info.json: the old one would vouch for new files.
    real, calls = convert._convert_item, []

    def crashing(*args):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt("simulated crash")
        return real(*args)
    monkeypatch.setattr(convert, "_convert_item", crashing)
    with pytest.raises(KeyboardInterrupt):
        convert.convert_folder(str(train), str(out), train_shards=3, validation_fraction=0.4,
                               progress=False, num_workers=1)
    assert not (out / "dataset_info.json").exists()
