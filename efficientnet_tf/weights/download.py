"""Downloads into the local cache, and keras.applications' ImageNet weights files (URLs, hashes)."""
from __future__ import annotations

import hashlib
import http.client
import os
import re
import tempfile
import urllib.error
import urllib.request
import warnings

# keras/src/applications/efficientnet.py (Keras 3.15): BASE_WEIGHTS_PATH, WEIGHTS_HASHES.
# The hashes are 32 hex digits, i.e. MD5 (keras.utils.get_file picks md5 for those).
BASE_WEIGHTS_URL = "https://storage.googleapis.com/keras-applications/"
WEIGHTS_HASHES = {  # variant: (with top "efficientnetbN.h5", notop "efficientnetbN_notop.h5")
    "b0": ("902e53a9f72be733fc0bcb005b3ebbac", "50bc09e76180e00e4465e1a485ddc09d"),
    "b1": ("1d254153d4ab51201f1646940f018540", "74c4e6b3e1f6a1eea24c589628592432"),
    "b2": ("b15cce36ff4dcbd00b6dd88e7857a6ad", "111f8e2ac8aa800a7a99e3239f7bfb39"),
    "b3": ("ffd1fdc53d0ce67064dc6a9c7960ede0", "af6d107764bb5b1abb91932881670226"),
    "b4": ("18c95ad55216b8f92d7e70b3a046e2fc", "ebc24e6d6c33eaebbd558eafbeedf1ba"),
    "b5": ("ace28f2a6363774853a83a0b21b9421a", "38879255a25d3c92d5e44e04ae6cec6f"),
    "b6": ("165f6e37dce68623721b423839de8be5", "9ecce42647a20130c1f39a5d4cb75743"),
    "b7": ("8c03f828fec3ef71311cd463b6759d99", "cbcfe4450ddf6f3ad90b1b398090fe4a"),
}
URL_ENV = "EFFICIENTNET_TF_WEIGHTS_URL"
CACHE_ENV = "EFFICIENTNET_TF_CACHE"


class WeightsDownloadError(OSError):
    """The ImageNet weights could not be downloaded (offline, HTTP error, ...). `url`, `path`
    (where the file would have been cached) and `reason` let a CLI word its own hint."""

    def __init__(self, message: str, url: str = "", path: str = "", reason: str = ""):
        super().__init__(message)
        self.url, self.path, self.reason = url, path, reason

    def __str__(self) -> str:
        return self.args[0]


class WeightsHashError(ValueError):
    """A downloaded or cached weights file does not have the published hash."""


def weights_file_name(variant: str, include_top: bool) -> str:
    """keras.applications' file name, so an existing ~/.keras/models cache is reused."""
    return f"efficientnet{variant}{'' if include_top else '_notop'}.h5"


def default_cache_dir() -> str:
    """$EFFICIENTNET_TF_CACHE, else $KERAS_HOME/models, else ~/.keras/models (as Keras)."""
    if os.environ.get(CACHE_ENV):
        return os.path.expanduser(os.environ[CACHE_ENV])
    keras_home = os.environ.get("KERAS_HOME") or os.path.join("~", ".keras")
    return os.path.join(os.path.expanduser(keras_home), "models")


def file_digest(path: str, file_hash: str) -> str:
    """The file's hex digest with the algorithm the hash's length implies (32 md5, 64 sha256)."""
    h = _hasher(file_hash)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _hasher(file_hash: str):
    if not re.fullmatch(r"[0-9a-fA-F]{32}|[0-9a-fA-F]{64}", file_hash or ""):
        raise ValueError(f"file_hash must be 32 (md5) or 64 (sha256) hex digits, got {file_hash!r}.")
    return hashlib.md5() if len(file_hash) == 32 else hashlib.sha256()


def fetch_weights(variant: str, include_top: bool = True, *, base_url: str | None = None,
                  file_hash: str | None = None, cache_dir: str | None = None,
                  timeout: float = 60.0) -> str:
    """Returns the local path of keras.applications' ImageNet weights file for `variant`.

    Uses the cached copy when its hash is right, else downloads `base_url + file name`
    (base_url defaults to $EFFICIENTNET_TF_WEIGHTS_URL, then Keras' bucket), checks the hash
    before the file gets its final name, and renames it into the cache atomically.
    `file_hash` overrides the published md5 (md5 or sha256 hex).
    """
    if variant not in WEIGHTS_HASHES:
        raise ValueError(f"No ImageNet weights for variant {variant!r}; "
                         f"valid: {', '.join(WEIGHTS_HASHES)}.")
    name = weights_file_name(variant, include_top)
    expected = (file_hash or WEIGHTS_HASHES[variant][0 if include_top else 1]).lower()
    _hasher(expected)
    base = base_url or os.environ.get(URL_ENV) or BASE_WEIGHTS_URL
    url = base.rstrip("/") + "/" + name
    cache = os.path.expanduser(cache_dir) if cache_dir else default_cache_dir()
    path = os.path.join(cache, name)

    if os.path.exists(path):
        if file_digest(path, expected) == expected:
            return path
        warnings.warn(f"Cached {path} does not have the expected hash {expected}; "
                      "downloading it again.", stacklevel=2)
    make_cache_dir(cache)

    hint = (f"If this machine is offline, get that file on a machine with internet access "
            f"({url}, hash {expected}) and pass its path instead: EfficientNet{variant.upper()}("
            f"include_top={include_top}, weights=\"/path/to/{name}\"); or copy it to {path} (it "
            f"is checked against the hash), or point ${URL_ENV} at a mirror.")
    download(url, path, file_hash=expected, timeout=timeout,
             what=f"the EfficientNet-{variant.upper()} ImageNet weights", offline_hint=hint)
    return path


def make_cache_dir(cache: str) -> None:
    try:
        os.makedirs(cache, exist_ok=True)
    except OSError as e:
        raise WeightsDownloadError(
            f"Cannot create the weights cache directory {cache} ({e}). Set ${CACHE_ENV} "
            "to a writable directory.") from e


def download(url: str, path: str, *, file_hash: str | None = None, timeout: float = 60.0,
             what: str = "the weights", offline_hint: str = "") -> str:
    """Downloads `url` to `path`: into a `.part` file beside it, checked against `file_hash`
    (md5 or sha256 hex; None: no check) and only then renamed to `path` (atomic on one
    filesystem), so `path` is never a partial file. Returns the file's sha256 hex digest."""
    expected = file_hash.lower() if file_hash else None
    if expected:
        _hasher(expected)
    fd, tmp = tempfile.mkstemp(prefix=os.path.basename(path) + ".", suffix=".part",
                               dir=os.path.dirname(path) or ".")
    try:
        h, sha256 = (_hasher(expected) if expected else None), hashlib.sha256()
        try:
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as resp:
                for chunk in iter(lambda: resp.read(1 << 20), b""):
                    if h is not None:
                        h.update(chunk)
                    sha256.update(chunk)
                    out.write(chunk)
        except (urllib.error.URLError, http.client.HTTPException, OSError) as e:
            reason = e if isinstance(e, urllib.error.HTTPError) else getattr(e, "reason", e)
            raise WeightsDownloadError(
                f"Could not download {what} from {url}: {reason}.\n{offline_hint}",
                url=url, path=path, reason=str(reason)) from e
        got = h.hexdigest() if h is not None else None
        if expected and got != expected:
            raise WeightsHashError(
                f"Downloaded {url} has hash {got} but {expected} was expected; the file was "
                "discarded (corrupt download or wrong mirror). Try again, or download it "
                "yourself and pass its path.")
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; keras' cache files are world-readable
        os.replace(tmp, path)
        tmp = None
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.remove(tmp)
    return sha256.hexdigest()
