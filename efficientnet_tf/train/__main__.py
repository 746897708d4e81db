"""python -m efficientnet_tf.train"""
from efficientnet_tf.train.main import entry

entry()
