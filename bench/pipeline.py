"""Input-pipeline throughput on real JPEGs; prints JSON (images/s).

    .venv/bin/python bench/pipeline.py [--records 300] [--seconds 6] [--size 224] [--batch 32]

Makes TFRecords of real photos (scikit-image samples, cropped/flipped/rescaled to about
400x350 px like an average ImageNet image, JPEG q90) in a temp dir, caches the records in
memory (so disk is not measured) and times, with tf.data AUTOTUNE on all cores:
  a  decode only (decode_jpeg, the ceiling)      b  train preprocessing, no augmentation
  c  train + RandAugment(2, 10)                  d  train + AutoAugment v0
  e  eval preprocessing                          f  decode_and_crop_jpeg vs decode-then-crop
b..e go through efficientnet_tf.data.pipeline.build_dataset (parse, preprocess, batch).
With --model_garden_python=<python of another env with tf-models-official> the same files are
also read by Model Garden's classification parser (b..e) in a subprocess, in the same run.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from skimage import data as skdata  # noqa: E402

from efficientnet_tf.data import preprocessing, tfrecord  # noqa: E402
from efficientnet_tf.data.pipeline import DataConfig, build_dataset  # noqa: E402

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "motorcycle_left",
          "hubble_deep_field", "retina", "cat")


def make_records(out_dir: str, n: int, seed: int = 0) -> tuple[list[str], dict]:
    """n JPEGs of about 400x350 px cut from the skimage photos, in 4 shards."""
    rng = np.random.default_rng(seed)
    photos = []
    for name in PHOTOS:
        try:
            img = getattr(skdata, name)()
        except Exception:  # a sample that needs a download (pooch) is skipped
            continue
        if img.ndim == 3 and img.shape[-1] == 3:
            photos.append(img)
    sizes, files = [], [os.path.join(out_dir, f"train-{i:05d}-of-00004") for i in range(4)]
    writers = [tf.io.TFRecordWriter(f) for f in files]
    for i in range(n):
        img = tf.constant(photos[i % len(photos)])
        h, w = int(rng.integers(300, 420)), int(rng.integers(330, 470))
        scale = max(h / img.shape[0], w / img.shape[1]) * rng.uniform(1.0, 1.6)
        big = tf.image.resize(img, [int(img.shape[0] * scale) + 1, int(img.shape[1] * scale) + 1])
        y = int(rng.integers(0, big.shape[0] - h + 1))
        x = int(rng.integers(0, big.shape[1] - w + 1))
        crop = tf.cast(tf.clip_by_value(big[y:y + h, x:x + w], 0, 255), tf.uint8)
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        jpeg = tf.io.encode_jpeg(crop, quality=90).numpy()
        sizes.append((h, w, len(jpeg)))
        ex = tfrecord.make_example(jpeg, 1 + i % 10, h, w, filename=f"img{i}.jpg")
        writers[i % 4].write(ex.SerializeToString())
    for wr in writers:
        wr.close()
    s = np.array(sizes)
    return files, {"records": n, "photos": len(photos), "mean_hw": [round(float(s[:, 0].mean())),
                   round(float(s[:, 1].mean()))], "mean_jpeg_kb": round(float(s[:, 2].mean()) / 1024, 1)}


def images_per_second(ds: tf.data.Dataset, batch: int, seconds: float) -> tuple[float, float]:
    """(images per wall-clock second, images per CPU-second of this process).

    The CPU-time rate is much less sensitive to other processes competing for the cores.
    """
    it = iter(ds)
    for _ in range(3):  # warm-up: autotune, cache fill
        next(it)
    n, start, cpu = 0, time.perf_counter(), time.process_time()
    while time.perf_counter() - start < seconds:
        next(it)
        n += batch
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    return round(n / wall, 1), round(n / max(cpu, 1e-9), 1)


def raw_dataset(files: list[str], fn, batch: int) -> tf.data.Dataset:
    def parse(serialized):
        return fn(tfrecord.parse_example(serialized)[tfrecord.ENCODED])
    ds = tf.data.TFRecordDataset(files).cache().repeat()
    return ds.map(parse, num_parallel_calls=tf.data.AUTOTUNE).batch(batch).prefetch(tf.data.AUTOTUNE)


MODEL_GARDEN = r"""
import json, os, sys, time
import tensorflow as tf
from official.vision.configs import common
from official.vision.dataloaders import classification_input as ci
files, size, batch, seconds, only, rounds = json.loads(sys.argv[1])

def rate(parser, training):
    decoder = ci.Decoder()
    fn = parser.parse_fn(training)
    ds = tf.data.TFRecordDataset(files).cache().repeat()
    ds = ds.map(lambda s: fn(decoder.decode(s)), num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.batch(batch).prefetch(tf.data.AUTOTUNE)
    rates, cpus = [], []
    for _ in range(rounds):
        it = iter(ds)
        for _ in range(3):
            next(it)
        n, start, cpu = 0, time.perf_counter(), time.process_time()
        while time.perf_counter() - start < seconds / rounds:
            next(it)
            n += batch
        rates.append(round(n / (time.perf_counter() - start), 1))
        cpus.append(round(n / max(time.process_time() - cpu, 1e-9), 1))
    return sorted(rates)[rounds // 2], sorted(cpus)[rounds // 2]

def parser(aug=None):
    return ci.Parser(output_size=[size, size], num_classes=1000, aug_type=aug,
                     tf_resize_method="bicubic", center_crop_fraction=size / (size + 32))
out = {}
if "b" in only:
    out["b_train_no_augment"] = rate(parser(), True)
if "c" in only:
    out["c_train_randaugment_2_10"] = rate(parser(common.Augmentation(
        type="randaug", randaug=common.RandAugment(num_layers=2, magnitude=10))), True)
if "d" in only:
    out["d_train_autoaugment_v0"] = rate(parser(common.Augmentation(
        type="autoaug", autoaug=common.AutoAugment(augmentation_name="v0"))), True)
if "e" in only:
    out["e_eval"] = rate(parser(), False)
print("RESULT" + json.dumps(out))
"""


def run_model_garden(python: str, files: list[str], args) -> dict:
    """Times Model Garden's classification parser on the same files in its own environment."""
    import subprocess
    payload = json.dumps([files, args.size, args.batch, args.seconds, args.only, args.rounds])
    proc = subprocess.run([python, "-c", MODEL_GARDEN, payload], capture_output=True, text=True,
                          env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    if proc.returncode != 0 or "RESULT" not in proc.stdout:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "failed"}
    raw = json.loads(proc.stdout.split("RESULT", 1)[1])
    return {"images_per_second": {k: v[0] for k, v in raw.items()},
            "images_per_cpu_second": {k: v[1] for k, v in raw.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--records", type=int, default=300)
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3, help="median over this many rounds")
    parser.add_argument("--only", default="abcdef", help="subset of the cases, e.g. 'abf'")
    parser.add_argument("--model_garden_python", default=None,
                        help="python of a separate env with tf-models-official installed")
    args = parser.parse_args()
    size, batch = args.size, args.batch
    result = {"machine": {"cpus": os.cpu_count(), "loadavg_1m": round(os.getloadavg()[0], 2),
                          "python": platform.python_version(), "tensorflow": tf.__version__},
              "settings": {"image_size": size, "batch": batch, "seconds_per_case": args.seconds,
                           "rounds": args.rounds},
              "images_per_second": {}, "images_per_cpu_second": {}, "notes": {}}
    ips = result["images_per_second"]
    with tempfile.TemporaryDirectory() as tmp:
        files, result["data"] = make_records(tmp, args.records)

        def pipeline(**kw):
            config = DataConfig(data_dir=tmp, image_size=size, cache=True, shuffle_buffer=256, **kw)
            return build_dataset(config, "train", batch, repeat=True)

        cases: dict[str, tf.data.Dataset] = {}
        if "a" in args.only:
            cases["a_decode_only"] = raw_dataset(
                files, lambda b: tf.shape(tf.io.decode_jpeg(b, channels=3)), batch)
        if "b" in args.only:
            cases["b_train_no_augment"] = pipeline()
        for key, name in (("c", "randaugment"), ("d", "autoaugment")):
            if key not in args.only:
                continue
            label = f"{key}_train_{name}" + ("_2_10" if name == "randaugment" else "_v0")
            try:
                import efficientnet_tf.data.augment  # noqa: F401
            except ImportError as e:
                ips[label] = None
                result["notes"][label] = f"efficientnet_tf.data.augment not importable: {e}"
                continue
            cases[label] = pipeline(augment_name=name, randaug_num_layers=2, randaug_magnitude=10.0)
        if "e" in args.only:
            config = DataConfig(data_dir=tmp, image_size=size, cache=True,
                                eval_file_pattern="train-*")
            cases["e_eval"] = build_dataset(config, "eval", batch, repeat=True)
        if "f" in args.only:
            def window(shape):
                return preprocessing.train_crop_window(shape, size)

            def crop_decode(b):
                return tf.shape(preprocessing.decode_and_crop(b, window))

            def decode_then_crop(b):
                image = tf.io.decode_jpeg(b, channels=3)
                w = window(tf.shape(image)[:2])
                return tf.shape(image[w[0]:w[0] + w[2], w[1]:w[1] + w[3]])
            cases["f_decode_and_crop_jpeg"] = raw_dataset(files, crop_decode, batch)
            cases["f_decode_then_crop"] = raw_dataset(files, decode_then_crop, batch)
        rounds = {k: [] for k in cases}
        cpu_rounds = {k: [] for k in cases}
        for _ in range(args.rounds):  # round-robin, so load from other processes hits all cases
            for k, ds in cases.items():
                wall, cpu = images_per_second(ds, batch, args.seconds / args.rounds)
                rounds[k].append(wall)
                cpu_rounds[k].append(cpu)
        for k in cases:
            ips[k] = float(np.median(rounds[k]))
            result["images_per_cpu_second"][k] = float(np.median(cpu_rounds[k]))
        result["per_round"] = rounds
        if args.model_garden_python:
            result["model_garden"] = run_model_garden(args.model_garden_python, files, args)
            result["notes"]["model_garden"] = (
                "tf-models-official classification_input.Parser (Decoder + parse_fn), same files, "
                "same record cache/batch/timing; run with --model_garden_python (separate env). "
                "Its train path also normalizes by mean/std; resize 'bicubic' (TF2).")
        else:
            result["notes"]["model_garden"] = ("not measured: pass --model_garden_python=<python of "
                                               "an env with tf-models-official>")
    ratios = {}
    if ips.get("a_decode_only") and ips.get("b_train_no_augment"):
        ratios["b_over_a"] = round(ips["b_train_no_augment"] / ips["a_decode_only"], 3)
    cps = result["images_per_cpu_second"]
    if cps.get("a_decode_only") and cps.get("b_train_no_augment"):
        ratios["b_over_a_cpu"] = round(cps["b_train_no_augment"] / cps["a_decode_only"], 3)
    if cps.get("f_decode_then_crop") and cps.get("f_decode_and_crop_jpeg"):
        ratios["crop_decode_speedup_cpu"] = round(
            cps["f_decode_and_crop_jpeg"] / cps["f_decode_then_crop"], 3)
    if ips.get("f_decode_then_crop") and ips.get("f_decode_and_crop_jpeg"):
        ratios["crop_decode_speedup"] = round(
            ips["f_decode_and_crop_jpeg"] / ips["f_decode_then_crop"], 3)
    result["ratios"] = ratios
    mg = result.get("model_garden") or {}
    for mine, theirs, name in ((ips, mg.get("images_per_second", {}), "c_over_model_garden_c"),
                               (cps, mg.get("images_per_cpu_second", {}),
                                "c_over_model_garden_c_cpu")):
        if mine.get("c_train_randaugment_2_10") and theirs.get("c_train_randaugment_2_10"):
            ratios[name] = round(mine["c_train_randaugment_2_10"]
                                 / theirs["c_train_randaugment_2_10"], 3)
    result["machine"]["loadavg_1m_end"] = round(os.getloadavg()[0], 2)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
