"""Export: SavedModels that TF Serving loads as they are, and TFLite flatbuffers.

    from efficientnet_tf.export import export_saved_model
    path = export_saved_model(model, "/tmp/serving/efficientnet")  # -> /tmp/serving/efficientnet/1

CLI (flags live only in __main__.py):
    python -m efficientnet_tf.export --model_dir=... --export_dir=...
"""
from efficientnet_tf.export.saved_model import (
    SIGNATURES,
    ServingModule,
    check_export_dir,
    export_saved_model,
    model_outputs_logits,
    next_version,
    remove_stale_temp_dirs,
)

__all__ = ["SIGNATURES", "ServingModule", "check_export_dir", "export_saved_model",
           "model_outputs_logits", "next_version", "remove_stale_temp_dirs", "export_tflite",
           "load_model_for_export", "fold_batch_norm", "Predictor"]


def __getattr__(name):  # lazy: TFLite, checkpoint loading and folding import more of TF/Keras
    if name == "export_tflite":
        from efficientnet_tf.export.tflite import export_tflite

        return export_tflite
    if name == "load_model_for_export":
        from efficientnet_tf.export.load_run import load_model_for_export

        return load_model_for_export
    if name == "Predictor":
        from efficientnet_tf.export.predictor import Predictor

        return Predictor
    if name == "fold_batch_norm":
        from efficientnet_tf.export.fold import fold_batch_norm

        return fold_batch_norm
    raise AttributeError(f"module 'efficientnet_tf.export' has no attribute {name!r}")
