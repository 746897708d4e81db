"""tf.data pipeline on real converted data: shapes, dtypes, order, sharding, tfds, strategies."""
import json
import os
import shutil

import numpy as np
import pytest
import tensorflow as tf

from efficientnet_tf.data import convert, preprocessing, tfrecord
from efficientnet_tf.data.pipeline import DataConfig, build_dataset, count_examples

from fmnist import FMNIST, needs_fashion_mnist, require

pytestmark = needs_fashion_mnist
N = 96


@pytest.fixture(scope="module")
def fm_dir(tmp_path_factory):
    require()
    out = str(tmp_path_factory.mktemp("fm"))
    convert.convert_idx(FMNIST, out, max_examples=N, train_shards=4, validation_shards=3,
                        progress=False)
    return out


@pytest.fixture(scope="module")
def idx():
    return (convert.read_idx(f"{FMNIST}/t10k-images-idx3-ubyte.gz")[:N],
            convert.read_idx(f"{FMNIST}/t10k-labels-idx1-ubyte.gz")[:N].astype(np.int32))


def _config(fm_dir, **kw):
    base = dict(data_dir=fm_dir, image_size=28, num_classes=10, crop_padding=0, shuffle_buffer=64)
    return DataConfig(**{**base, **kw})


@pytest.mark.parametrize("dtype", ["uint8", "float32", "bfloat16"])
def test_train_batches_are_static_shaped_in_range(fm_dir, dtype):
    ds = build_dataset(_config(fm_dir, image_size=32, image_dtype=dtype), "train", 16)
    images_spec, labels_spec = ds.element_spec
    assert images_spec.shape == (16, 32, 32, 3) and labels_spec.shape == (16,)
    assert images_spec.dtype.name == dtype and labels_spec.dtype == tf.int32
    labels = []
    for images, y in ds.take(8):  # 128 > 96 examples: repeats
        pixels = tf.cast(images, tf.float32)
        assert 0 <= float(tf.reduce_min(pixels)) and float(tf.reduce_max(pixels)) <= 255
        labels.append(y.numpy())
    labels = np.concatenate(labels)
    assert labels.min() >= 0 and labels.max() <= 9 and len(set(labels)) > 5


def test_eval_reads_every_record_once_in_a_fixed_order(fm_dir, idx):
    images, labels = idx
    config = _config(fm_dir, cycle_length=1, image_dtype="float32")
    ds = build_dataset(config, "validation", 40)
    assert ds.element_spec[0].shape.as_list() == [None, 28, 28, 3]
    got_x, got_y = zip(*[(x.numpy(), y.numpy()) for x, y in ds])
    assert [len(y) for y in got_y] == [40, 40, 16]
    np.testing.assert_array_equal(np.concatenate(got_y), labels)  # stored 1-based, read 0-based
    # 28 -> 28 with crop_padding 0 is the identity crop/resize: pixels are the IDX digits (+JPEG)
    err = np.abs(np.concatenate(got_x)[..., 0] - images.astype(np.float32))
    assert err.mean() < 2.5
    again = np.concatenate([y.numpy() for _, y in build_dataset(config, "eval", 40)])
    np.testing.assert_array_equal(again, labels)
    assert count_examples(config, "eval") == N
    dropped = build_dataset(_config(fm_dir, eval_drop_remainder=True), "eval", 40)
    assert dropped.element_spec[0].shape[0] == 40 and sum(1 for _ in dropped) == 2


def test_eval_images_are_the_eval_preprocessing(fm_dir):
    config = _config(fm_dir, image_size=20, crop_padding=4, cycle_length=1)
    x, _ = next(iter(build_dataset(config, "eval", 4)))
    record = next(iter(tf.data.TFRecordDataset(sorted(tf.io.gfile.glob(f"{fm_dir}/validation-*")))))
    raw = tf.io.parse_single_example(record, {"image/encoded": tf.io.FixedLenFeature([], tf.string)})
    np.testing.assert_allclose(x[0], preprocessing.preprocess_for_eval(raw["image/encoded"], 20, 4),
                               atol=1e-4)


def test_deterministic_seeded_train_is_reproducible(fm_dir):
    # (with augment_name too: test_preprocessing checks the seeded augment path)
    config = _config(fm_dir, deterministic=True, seed=7)
    a = [(x.numpy(), y.numpy()) for x, y in build_dataset(config, "train", 8).take(3)]
    b = [(x.numpy(), y.numpy()) for x, y in build_dataset(config, "train", 8).take(3)]
    for (xa, ya), (xb, yb) in zip(a, b):
        np.testing.assert_array_equal(ya, yb)
        np.testing.assert_array_equal(xa, xb)
    c = [y.numpy() for _, y in build_dataset(_config(fm_dir, deterministic=True, seed=8), "train", 8).take(3)]
    assert not all(np.array_equal(ya, yc) for (_, ya), yc in zip(a, c))


def _stream(config, batches):
    return [(x.numpy(), y.numpy()) for x, y in build_dataset(config, "train", 8).take(batches)]


def test_a_seeded_training_stream_depends_on_its_seed_alone(fm_dir):
    """A seeded tf.data shuffle takes (TensorFlow's global seed, its own seed): when the
    trainer stopped leaving the model's seed in the global seed, the demo's training stream
    changed. build_dataset now sets the global seed to data.seed while it builds, and puts the
    previous one back."""
    from tensorflow.python.eager import context

    config = _config(fm_dir, deterministic=True, seed=7)
    alone = _stream(config, 24)  # two epochs of 96 images
    tf.random.set_seed(123)  # a process that holds another global seed
    try:
        other = _stream(config, 24)
        assert context.context()._seed == 123  # left as it was
    finally:
        tf.random.set_seed(None)
    assert context.context()._seed is None
    for (xa, ya), (xb, yb) in zip(alone, other):
        np.testing.assert_array_equal(ya, yb)
        np.testing.assert_array_equal(xa, xb)
    # Each epoch has every label as often as the split does, in another order.
    records = tf.data.TFRecordDataset(sorted(tf.io.gfile.glob(f"{fm_dir}/train-*")))
    labels = np.sort([int(tf.io.parse_single_example(r, tfrecord.TRAIN_FEATURES)[tfrecord.LABEL])
                      - 1 for r in records])
    epochs = [np.concatenate([y for _, y in alone[e * 12:(e + 1) * 12]]) for e in (0, 1)]
    for epoch in epochs:
        np.testing.assert_array_equal(np.sort(epoch), labels)
    assert not np.array_equal(epochs[0], epochs[1])


def test_random_flip_off_reaches_the_train_pipeline(fm_dir):
    def batches(**kw):
        config = _config(fm_dir, deterministic=True, seed=7, min_crop_area=0.85, **kw)
        return [(x.numpy(), y.numpy()) for x, y in build_dataset(config, "train", 16).take(2)]

    mirrored = 0
    for (xf, yf), (xk, yk) in zip(batches(), batches(random_flip=False)):
        np.testing.assert_array_equal(yf, yk)  # same order, same crops: only flips differ
        for a, b in zip(xf, xk):
            same = np.array_equal(a, b)
            assert same or np.array_equal(a[:, ::-1], b)
            mirrored += not same
    assert mirrored > 0


def test_train_crops_fall_back_to_the_configured_eval_crop(fm_dir):
    # min_crop_area 1: every crop falls back to the eval crop, the whole image with crop_padding 0
    config = _config(fm_dir, eval_file_pattern="train-*", cycle_length=1, min_crop_area=1.0,
                     random_flip=False, deterministic=True, seed=3)
    whole = np.concatenate([x.numpy() for x, _ in build_dataset(config, "eval", 32)])
    train = next(iter(build_dataset(config, "train", 32)))[0].numpy()
    for image in train:
        assert np.abs(whole - image).max(axis=(1, 2, 3)).min() == 0


def test_input_context_gives_per_replica_batches_and_disjoint_file_shards(fm_dir):
    seen = []
    for pipeline in range(2):
        ctx = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=pipeline,
                                         num_replicas_in_sync=2)
        train = build_dataset(_config(fm_dir), "train", 16, input_context=ctx)
        assert train.element_spec[0].shape == (8, 28, 28, 3)
        ev = build_dataset(_config(fm_dir), "eval", 16, input_context=ctx)
        seen.append(sorted(float(tf.reduce_sum(x)) for xs, _ in ev for x in xs))
    everything = sorted(float(tf.reduce_sum(x)) for xs, _ in build_dataset(_config(fm_dir), "eval", 16)
                        for x in xs)
    assert 0 < len(seen[0]) < N and 0 < len(seen[1]) < N
    np.testing.assert_allclose(sorted(seen[0] + seen[1]), everything)


def test_wrong_label_offset_is_reported(fm_dir, tmp_path):
    # Records without the converter's dataset_info.json: the labels themselves are checked.
    bare = tmp_path / "bare"
    shutil.copytree(fm_dir, bare)
    os.remove(bare / "dataset_info.json")
    ds = build_dataset(_config(str(bare), label_offset=0), "eval", 96)
    with pytest.raises(tf.errors.InvalidArgumentError, match="label_offset"):
        for _ in ds:
            pass


def test_missing_files_name_pattern_dir_and_converter(tmp_path):
    with pytest.raises(ValueError) as e:
        build_dataset(DataConfig(data_dir=str(tmp_path), image_size=32), "train", 8)
    assert "'train-*'" in str(e.value) and str(tmp_path) in str(e.value)
    assert "efficientnet_tf.data.convert" in str(e.value)
    with pytest.raises(ValueError, match="image_dtype"):
        DataConfig(data_dir="x", image_dtype="float16")


def test_synthetic_data(tmp_path):
    config = DataConfig(synthetic=True, image_size=24, num_classes=5, image_dtype="bfloat16")
    ds = build_dataset(config, "train", 6)
    x, y = next(iter(ds))
    assert x.shape == (6, 24, 24, 3) and x.dtype == tf.bfloat16 and y.dtype == tf.int32
    assert 0 <= int(tf.reduce_min(y)) and int(tf.reduce_max(y)) < 5
    assert float(tf.math.reduce_std(tf.cast(x, tf.float32))) > 50  # random pixels
    assert sum(1 for _ in build_dataset(config, "eval", 256)) == 4  # 1024 examples


@pytest.mark.parametrize("name,splits", [("imagenet2012", ("train", "validation")),
                                         ("fashion_mnist", ("train", "test"))])
def test_tfds_source_with_mock_data(tmp_path, name, splits):
    tfds = pytest.importorskip("tensorflow_datasets")
    config = DataConfig(data_dir=f"tfds:{name}:{tmp_path}", image_size=32,
                        num_classes=1000 if name == "imagenet2012" else 10, label_offset=1,
                        tfds_train_split=splits[0], tfds_eval_split=splits[1], image_dtype="uint8")
    with tfds.testing.mock_data(num_examples=12):
        train = build_dataset(config, "train", 4)
        x, y = next(iter(train))
        assert x.shape == (4, 32, 32, 3) and x.dtype == tf.uint8
        assert int(tf.reduce_min(y)) >= 0 and int(tf.reduce_max(y)) < config.num_classes
        ev = list(build_dataset(config, "eval", 5))
        assert sum(int(b[1].shape[0]) for b in ev) == 12


def test_config_contradicting_dataset_info_is_a_clear_error(fm_dir):
    """The converter records num_classes and label_offset; a config that disagrees stops early."""
    with pytest.raises(ValueError, match="dataset_info.json says num_classes=10 .* data.num_classes=7"):
        build_dataset(_config(fm_dir, num_classes=7), "train", 8)
    with pytest.raises(ValueError, match="label_offset=1 but the config has data.label_offset=0"):
        build_dataset(_config(fm_dir, label_offset=0), "validation", 8)


def _tiny_converted(root, monkeypatch=None, crash_at=None):
    """8 tiny JPEGs of 2 classes -> 4 train shards of 2 (one writer, in order) and 1 validation
    shard; crash_at=k stops the converter at its k-th image, as a killed run would."""
    from PIL import Image
    for i in range(10):
        path = root / "photos" / "ab"[i % 2] / f"{i}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((8, 8, 3), 20 * i, np.uint8)).save(path)
    if crash_at:
        real, calls = convert._convert_item, []

        def crashing(*args):
            calls.append(1)
            if len(calls) == crash_at:
                raise KeyboardInterrupt("simulated kill")
            return real(*args)
        monkeypatch.setattr(convert, "_convert_item", crashing)
    out = root / "out"
    convert.convert_folder(str(root / "photos"), str(out), train_shards=4, validation_shards=1,
                           validation_fraction=0.2, num_workers=1, progress=False)
    return out


def _tiny_config(data_dir, **kw):
    return DataConfig(data_dir=str(data_dir), image_size=8, num_classes=2, crop_padding=0, **kw)


def _count(data_dir, split, **kw):
    return sum(int(y.shape[0]) for _, y in build_dataset(_tiny_config(data_dir, **kw), split, 2,
                                                         repeat=False, drop_remainder=False))


def test_a_converted_folder_missing_a_listed_shard_is_refused_naming_it(tmp_path):
    out = _tiny_converted(tmp_path)
    assert _count(out, "train") == 8 and _count(out, "validation") == 2
    kept = (out / "train-00002-of-00004").read_bytes()
    os.remove(out / "train-00002-of-00004")
    with pytest.raises(ValueError, match=r"1 are missing: train-00002-of-00004\. .*re-run the "
                                         r"converter \(python -m efficientnet_tf.data.convert"):
        build_dataset(_tiny_config(out), "train", 2)
    assert _count(out, "validation") == 2  # the other split is whole
    (out / "train-00002-of-00004").write_bytes(b"")
    with pytest.raises(ValueError, match="train-00002-of-00004 are empty but dataset_info.json"):
        build_dataset(_tiny_config(out), "train", 2)
    (out / "train-00002-of-00004").write_bytes(kept)
    shutil.copy(out / "train-00000-of-00004", out / "train-00000-of-00004.bak")
    with pytest.raises(ValueError, match=r"train-00000-of-00004\.bak match 'train-\*' but are not"):
        build_dataset(_tiny_config(out), "train", 2)


def test_without_dataset_info_a_gap_in_the_of_names_is_refused(tmp_path, capfd):
    out = _tiny_converted(tmp_path)
    os.remove(out / "dataset_info.json")
    assert _count(out, "train") == 8
    assert "checked by their -NNNNN-of-MMMMM names only" in capfd.readouterr().err
    os.remove(out / "train-00001-of-00004")
    with pytest.raises(ValueError,
                       match="1 of the 4 train shards are missing: train-00001-of-00004"):
        build_dataset(_tiny_config(out), "train", 2)


def test_an_old_dataset_info_without_a_shard_list_falls_back_to_the_name_check(tmp_path):
    out = _tiny_converted(tmp_path)
    info = json.loads((out / "dataset_info.json").read_text())
    del info["shards"]
    (out / "dataset_info.json").write_text(json.dumps(info))
    assert _count(out, "train") == 8
    os.remove(out / "train-00003-of-00004")
    with pytest.raises(ValueError, match="missing: train-00003-of-00004"):
        build_dataset(_tiny_config(out), "train", 2)


def test_a_converter_killed_mid_split_leaves_a_folder_that_is_refused(tmp_path, monkeypatch, capfd):
    """Killed at the 5th train image: shards 0 and 1 are whole, 2 was a hidden temporary file,
    dataset_info.json was never written. The name check names the shards that never came."""
    with pytest.raises(KeyboardInterrupt):
        _tiny_converted(tmp_path, monkeypatch, crash_at=5)
    out = tmp_path / "out"
    assert sorted(n for n in os.listdir(out)) == ["train-00000-of-00004", "train-00001-of-00004"]
    with pytest.raises(ValueError, match="2 of the 4 train shards are missing: "
                                         "train-00002-of-00004, train-00003-of-00004"):
        build_dataset(_tiny_config(out), "train", 2)
    # Killed later, in the validation split: the train shards are all there and are read (with
    # the line saying only their names were checked); validation has none.
    monkeypatch.undo()
    shutil.rmtree(out)
    with pytest.raises(KeyboardInterrupt):
        _tiny_converted(tmp_path, monkeypatch, crash_at=9)
    assert not (out / "dataset_info.json").exists()
    capfd.readouterr()
    assert _count(out, "train") == 8
    assert "checked by their -NNNNN-of-MMMMM names only" in capfd.readouterr().err
    with pytest.raises(ValueError, match="no validation files match"):
        build_dataset(_tiny_config(out), "validation", 2)


def test_files_of_other_names_are_read_as_they_are_with_a_log_line(tmp_path, capfd):
    out = _tiny_converted(tmp_path)
    os.mkdir(tmp_path / "mine")
    for i, name in enumerate(sorted(n for n in os.listdir(out) if n.startswith("train-"))):
        shutil.copy(out / name, tmp_path / "mine" / f"part-{'abcd'[i]}.tfrecord")
    capfd.readouterr()
    assert _count(tmp_path / "mine", "train", train_file_pattern="part-*") == 8
    err = capfd.readouterr().err
    assert "no completeness check possible for 4 file(s) matching 'part-*'" in err
