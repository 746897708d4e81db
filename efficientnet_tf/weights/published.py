"""The TPU reference's published checkpoints as named weights: weights="advprop", ...

Each WeightSet knows its archive per variant, the published ImageNet top-1 and what the
weights were trained with (normalization, image size). `fetch_checkpoint` downloads an archive
into the cache, extracts it safely, checks it is a whole checkpoint of the expected variant and
only then gives it its final name. The reference publishes no checksums: pass
`file_hash=<sha256>` (of the archive) to pin one; the archive's sha256 is kept beside the extracted checkpoint
(file ARCHIVE_SHA256) so a pin can be checked against the cache too.
Sources: docs/reference.md "Published checkpoints".
"""
from __future__ import annotations

import dataclasses
import os
import re
import shutil
import tarfile
import tempfile
import zlib

from efficientnet_tf.weights.download import (
    WeightsDownloadError,
    default_cache_dir,
    download,
    make_cache_dir,
)

CHECKPOINTS_URL = "https://storage.googleapis.com/cloud-tpu-checkpoints/efficientnet/"
CHECKPOINTS_URL_ENV = "EFFICIENTNET_TF_CHECKPOINTS_URL"  # a mirror of CHECKPOINTS_URL
MAX_ARCHIVE_BYTES = 16 << 30  # extracted size bound (L2's archive holds about 2 GB)
SHA256_FILE = "ARCHIVE_SHA256"


@dataclasses.dataclass(frozen=True)
class WeightSet:
    """One published set: `archives` {variant: path under CHECKPOINTS_URL}, `top1` {variant:
    published ImageNet top-1 %}, and the settings its checkpoints need."""
    name: str
    description: str
    archives: dict
    top1: dict
    normalization: str = "imagenet"
    image_size: int | None = None  # None: the variant's own resolution


_SETS: dict[str, WeightSet] = {}


def register_weight_set(ws: WeightSet) -> WeightSet:
    if ws.name in _SETS or ws.name in ("imagenet", "auto"):
        raise ValueError(f"A weight set named {ws.name!r} already exists.")
    if set(ws.archives) != set(ws.top1):
        raise ValueError(f"{ws.name}: archives and top1 must name the same variants.")
    _SETS[ws.name] = ws
    return ws


def weight_sets() -> dict:
    return dict(_SETS)


def get_weight_set(name) -> WeightSet | None:
    """The set called `name`, or None when `name` is no set's name (e.g. a path)."""
    return _SETS.get(name) if isinstance(name, str) else None


def _register(name, description, folder, pattern, top1, **settings):
    archives = {v: f"{folder}/{pattern.format(v=v)}" for v in top1}
    register_weight_set(WeightSet(name, description, archives, top1, **settings))


def _b(*values) -> dict:
    return {f"b{i}": v for i, v in enumerate(values)}


_register("baseline", "the paper's recipe with ResNet preprocessing (crop and flip)",
          "ckpts", "efficientnet-{v}.tar.gz", _b(76.7, 78.7, 79.8, 81.1, 82.5, 83.1))
_register("autoaugment", "AutoAugment (the set keras.applications' converter reads)",
          "ckptsaug", "efficientnet-{v}.tar.gz",
          _b(77.1, 79.1, 80.1, 81.6, 82.9, 83.6, 84.0, 84.3))
_register("randaugment", "RandAugment (N=2, M=17 for B5, M=28 for B7)",
          "randaug", "efficientnet-{v}-randaug.tar.gz", {"b5": 83.7, "b7": 84.7})
_register("advprop", "AdvProp with AutoAugment; inputs x / 127.5 - 1",
          "advprop", "efficientnet-{v}.tar.gz",
          {**_b(77.6, 79.6, 80.5, 81.9, 83.3, 84.3, 84.8, 85.2), "b8": 85.5},
          normalization="advprop")
_register("noisy-student", "NoisyStudent (JFT-300M unlabeled images) with RandAugment",
          "noisystudent", "noisy_student_efficientnet-{v}.tar.gz",
          {**_b(78.8, 81.5, 82.4, 84.1, 85.3, 86.1, 86.4, 86.9), "l2": 88.4})
_register("lite", "EfficientNet-Lite (ReLU6, no squeeze-excite); inputs (x - 127) / 128",
          "lite", "efficientnet-{v}.tar.gz",
          {"lite0": 75.1, "lite1": 76.7, "lite2": 77.6, "lite3": 79.8, "lite4": 81.5},
          normalization="lite")
_register("noisy-student-475", "NoisyStudent's L2 run at 475 px (L2-475)",
          "noisystudent", "noisy_student_efficientnet-{v}_475.tar.gz", {"l2": 88.2},
          image_size=475)


def check_weight_set(ws: WeightSet, variant, include_top: bool, classes: int) -> None:
    if variant not in ws.archives:
        raise ValueError(
            f"weights={ws.name!r} ({ws.description}) exists for {', '.join(ws.archives)}, not "
            f"for {variant or 'a custom scaling'}. Sets: " + "; ".join(
                f"{s.name}: {', '.join(s.archives)}" for s in _SETS.values()) + ".")
    if include_top and classes != 1000:
        raise ValueError(
            f"weights={ws.name!r} with include_top=True needs classes=1000 (got {classes}). "
            "For another number of classes use include_top=False and add your own head.")


def archive_url(ws: WeightSet, variant: str, base_url: str | None = None) -> str:
    base = base_url or os.environ.get(CHECKPOINTS_URL_ENV) or CHECKPOINTS_URL
    return base.rstrip("/") + "/" + ws.archives[variant]


def fetch_checkpoint(name: str, variant: str, *, base_url: str | None = None,
                     file_hash: str | None = None, cache_dir: str | None = None,
                     timeout: float = 60.0, max_bytes: int = MAX_ARCHIVE_BYTES) -> str:
    """The local checkpoint prefix of set `name` for `variant`, downloaded on first use.

    Cache: <cache_dir or the weights cache>/efficientnet_tf/<set>/<variant>/, written only once
    the archive is extracted and verified. file_hash: the archive's sha256 (or md5) to insist on.
    """
    ws = get_weight_set(name)
    if ws is None:
        raise ValueError(f"No weight set named {name!r}; sets: {', '.join(_SETS)}.")
    check_weight_set(ws, variant, include_top=False, classes=1000)
    if file_hash and not re.fullmatch(r"[0-9a-fA-F]{64}", file_hash):
        raise ValueError(f"file_hash must be the archive's sha256 (64 hex digits), got "
                         f"{file_hash!r}.")
    url = archive_url(ws, variant, base_url)
    root = os.path.join(os.path.expanduser(cache_dir) if cache_dir else default_cache_dir(),
                        "efficientnet_tf", ws.name)
    final = os.path.join(root, variant)
    if os.path.isdir(final):
        recorded = _recorded_sha256(final)
        prefix = _find_prefix(final) if recorded else None
        if prefix and (not file_hash or recorded == file_hash.lower()):
            return prefix
        shutil.rmtree(final)  # incomplete, or another archive than the pinned one
    make_cache_dir(root)

    archive = os.path.join(root, f"{variant}.tar.gz")
    hint = (f"If this machine is offline, download {url} on a machine with internet access, "
            f"extract it (tar xzf) and pass the checkpoint directory as weights=, or point "
            f"${CHECKPOINTS_URL_ENV} at a mirror of {CHECKPOINTS_URL}.")
    sha256 = download(url, archive, file_hash=file_hash, timeout=timeout,
                      what=f"the {ws.name!r} EfficientNet-{variant.upper()} checkpoint",
                      offline_hint=hint)
    tmp = tempfile.mkdtemp(prefix=f"{variant}.", suffix=".part", dir=root)
    try:
        safe_extract(archive, tmp, max_bytes)
        prefix = _find_prefix(tmp)
        if prefix is None:
            raise ValueError(f"{url} holds no TF1 checkpoint (no *.index file).")
        verify_checkpoint(prefix, variant)
        with open(os.path.join(tmp, SHA256_FILE), "w") as f:
            f.write(sha256 + "\n")
        os.replace(tmp, final)
        tmp = None
    finally:
        os.remove(archive)
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    return _find_prefix(final)


def _recorded_sha256(folder: str) -> str | None:
    try:
        with open(os.path.join(folder, SHA256_FILE)) as f:
            return f.read().strip()
    except OSError:
        return None


def _find_prefix(folder: str) -> str | None:
    """The checkpoint under `folder`: a directory's latest by its `checkpoint` file, else the
    last *.index file by name; None when there is none."""
    from efficientnet_tf.weights.tf1_checkpoint import checkpoint_prefix

    indexes = []
    for dirpath, _, files in sorted(os.walk(folder)):
        if "checkpoint" in files:
            prefix = checkpoint_prefix(dirpath)
            if prefix and os.path.exists(prefix + ".index"):
                return prefix
        indexes += [os.path.join(dirpath, f[: -len(".index")]) for f in files
                    if f.endswith(".index")]
    return sorted(indexes)[-1] if indexes else None


def safe_extract(archive: str, dest: str, max_bytes: int = MAX_ARCHIVE_BYTES) -> None:
    """Extracts a tar(.gz) holding only regular files and folders with relative paths inside
    `dest`, at most max_bytes in all; anything else raises ValueError before a byte is written."""
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = tar.getmembers()
            _check_members(archive, members, max_bytes)
            if hasattr(tarfile, "data_filter"):  # Python >= 3.11.4: the same rules again
                tar.extractall(dest, members=members, filter="data")
            else:
                tar.extractall(dest, members=members)
    except (tarfile.TarError, EOFError, zlib.error) as e:
        raise ValueError(f"{archive} is not a readable tar archive: truncated or corrupt "
                         f"({e.__class__.__name__}: {e}).") from None


def _check_members(archive, members, max_bytes):
    total = 0
    for m in members:
        parts = m.name.replace("\\", "/").split("/")
        if m.name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", m.name) or ".." in parts:
            raise ValueError(f"{archive}: refusing member {m.name!r} (absolute path or '..').")
        if not (m.isfile() or m.isdir()):
            raise ValueError(f"{archive}: refusing member {m.name!r} (a link or a special "
                             "file; checkpoints hold regular files only).")
        total += m.size
        if total > max_bytes:
            raise ValueError(f"{archive}: more than {max_bytes} bytes once extracted; "
                             "refusing it.")


def verify_checkpoint(prefix: str, variant: str) -> None:
    """The checkpoint opens, reads whole (each tensor's checksum is checked on reading) and has
    the expected variant's scope and stem. ValueError otherwise."""
    import tensorflow as tf

    from efficientnet_tf import spec
    from efficientnet_tf.modelspec import resolve

    try:
        reader = tf.train.load_checkpoint(prefix)
        names = reader.get_variable_to_shape_map()
        for n in names:
            reader.get_tensor(n)
    except (tf.errors.OpError, IndexError) as e:
        raise ValueError(f"{prefix}: the checkpoint is truncated or corrupt "
                         f"({e.__class__.__name__}).") from None
    stems = [n for n in names if n.endswith("/stem/conv2d/kernel")]
    if not stems:
        raise ValueError(f"{prefix} is not an EfficientNet checkpoint (no */stem/conv2d/kernel).")
    scope = stems[0].split("/")[0]
    named = scope[len("efficientnet-"):] if scope.startswith("efficientnet-") else None
    want = resolve(variant)
    want_stem, want_blocks = want.stem_filters, len(want.blocks)
    blocks = {m[1] for n in names for m in [re.match(rf"{re.escape(scope)}/blocks_(\d+)/", n)]
              if m}
    if ((named != variant and named in spec.VARIANTS) or names[stems[0]][-1] != want_stem
            or len(blocks) != want_blocks):
        raise ValueError(
            f"{prefix} is a checkpoint of {scope} ({len(blocks)} blocks, stem "
            f"{names[stems[0]][-1]} filters), not of efficientnet-{variant} ({want_blocks} "
            f"blocks, stem {want_stem} filters).")


__all__ = ["CHECKPOINTS_URL", "CHECKPOINTS_URL_ENV", "WeightSet", "WeightsDownloadError",
           "check_weight_set", "fetch_checkpoint", "get_weight_set", "register_weight_set",
           "safe_extract", "verify_checkpoint", "weight_sets"]
