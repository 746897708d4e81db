"""Input data: TFRecord format, converter, preprocessing, augmentation, tf.data pipeline.

Kept light on purpose: import the submodules you need, e.g.
`from efficientnet_tf.data.pipeline import DataConfig, build_dataset`.
"""
