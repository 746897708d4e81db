"""Compound scaling as a method: the step-1 grid search under a measured-MACs budget
(grid_search), single-dimension vs compound scaling curves (scaling_curves) and class
activation maps (class_activation_map, grad_cam). Command line: python -m efficientnet_tf.research.

An orchestration layer: it uses the training loop (train/) and the model factory; nothing
below it imports it.
"""
from efficientnet_tf.research.bn import recalibrate_bn
from efficientnet_tf.research.cam import activation_map, class_activation_map, grad_cam
from efficientnet_tf.research.curves import curve_points, scaling_curves
from efficientnet_tf.research.runs import collect, train_point, train_points
from efficientnet_tf.research.search import grid_search
from efficientnet_tf.research.space import (Point, Profiler, grid_candidates, image_size,
                                            partition, point_config)

__all__ = ["Point", "Profiler", "activation_map", "class_activation_map", "collect",
           "curve_points", "grad_cam", "grid_candidates", "grid_search", "image_size",
           "partition", "point_config", "recalibrate_bn", "scaling_curves", "train_point",
           "train_points"]
