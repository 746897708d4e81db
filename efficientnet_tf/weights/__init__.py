"""weights=None | "imagenet" | a published set ("advprop", ...) | path: checks, download, loading.

"imagenet" is keras.applications' files (download.py); the TPU reference's published
checkpoints are named sets (published.py: "baseline", "autoaugment", "randaugment",
"advprop", "noisy-student", "noisy-student-475"), downloaded as archives and read as TF1
checkpoints.

A path is read by the first registered WeightFormat whose `sniff` accepts it (built in: Keras 3
.keras archives, keras.applications' legacy .h5 files, Keras 3 .weights.h5 (keras_formats.py);
the TPU reference's TF1 checkpoints, EMA shadows by default (tf1_checkpoint.py)).
Its `read` gives FileLayers under the file's names, its `map_names` turns those into our layer
names (keras.applications'), and only that mapped result reaches the matcher (load.py): a new
format is one `register_format(WeightFormat(name, sniff, read, map_names))` call.

Weights are matched to our layers by layer name. The Normalization layer is found by its type,
since Keras numbers it (normalization_1, ...) when several models are built in one process.
Everything is read and checked before anything is assigned: a mismatching file raises
ValueError and leaves the model untouched.

ImageNet normalization quirk (docs/reference.md "Input normalization"): keras.applications'
published files store the ImageNet STD values as the Normalization "variance";
keras.applications(weights="imagenet") compensates with an extra Rescaling(1/sqrt(std)), so it
effectively computes (x/255 - mean) / std. When a file's variance equals those std values
(within 1e-6) we load variance = std**2, which gives exactly that; any other variance is loaded
as it is (what keras weights=None + load_weights does).
"""
from efficientnet_tf.weights import keras_formats  # noqa: F401  (registers the built-ins)
from efficientnet_tf.weights import tf1_checkpoint  # noqa: F401  (the TPU reference's checkpoints)
from efficientnet_tf.weights.download import (
    BASE_WEIGHTS_URL,
    CACHE_ENV,
    URL_ENV,
    WEIGHTS_HASHES,
    WeightsDownloadError,
    WeightsHashError,
    default_cache_dir,
    fetch_weights,
    file_digest,
    weights_file_name,
)
from efficientnet_tf.weights.formats import (
    FileLayer,
    WeightFormat,
    basename,
    find_format,
    formats,
    is_norm_layer,
    keep_names,
    read_for_model,
    read_weights_file,
    register_format,
    unregister_format,
)
from efficientnet_tf.weights.load import (
    HEAD_LAYERS,
    LoadReport,
    check_weights_argument,
    load_weights,
    model_normalization,
)
from efficientnet_tf.weights.published import (
    CHECKPOINTS_URL,
    CHECKPOINTS_URL_ENV,
    WeightSet,
    fetch_checkpoint,
    get_weight_set,
    register_weight_set,
    safe_extract,
    verify_checkpoint,
    weight_sets,
)
