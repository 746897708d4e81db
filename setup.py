"""efficientnet_tf: EfficientNet for TensorFlow 2 / Keras 3 (train on Cloud TPU, serve with TF Serving)."""
from setuptools import find_packages, setup

setup(
    name="efficientnet_tf",
    version="0.1.0",
    description="EfficientNet B0-B7 for TensorFlow 2 / Keras 3: model, TPU training, TF Serving export",
    packages=find_packages(include=["efficientnet_tf", "efficientnet_tf.*"]),
    package_data={"efficientnet_tf": ["resources/*.json", "configs/*.yaml"]},
    python_requires=">=3.10",
    install_requires=[
        # TPU VMs install the TPU build of TensorFlow instead (see tpu/README.md).
        "tensorflow>=2.21,<2.22",
        "keras>=3.10,<4",
        "absl-py>=2.1",
        "tensorboard>=2.20",  # tf.summary needs it; TF 2.21 no longer pulls it in
        "tensorflow-datasets>=4.9",
        "pyyaml>=6",
        "numpy>=1.26",
        "h5py>=3.10",
        "matplotlib>=3.8",  # the training-curve PNG
        "ai-edge-litert>=2.1",  # runs .tflite files (tf.lite.Interpreter is deprecated)
    ],
    entry_points={"console_scripts": [  # beside python -m efficientnet_tf.<name>
        "efficientnet-train=efficientnet_tf.train.main:entry",
        "efficientnet-export=efficientnet_tf.export.__main__:entry",
        "efficientnet-predict=efficientnet_tf.predict:entry",
        "efficientnet-convert=efficientnet_tf.data.convert:entry",
        "efficientnet-evaluate=efficientnet_tf.evaluate:entry",
    ]},
    extras_require={
        "test": [
            "pytest>=8",
            "pytest-xdist>=3.5",
            "pillow>=10",
            "scikit-image>=0.22",
            "tensorflow-serving-api>=2.21,<2.22",
            # tests/test_backends.py runs the model and recipe.py under KERAS_BACKEND=jax;
            # the CPU build is enough (PyTorch is left out: docs/training.md).
            "jax[cpu]>=0.4.36",
        ],
    },
)
