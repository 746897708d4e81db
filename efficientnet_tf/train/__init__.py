"""Training: configs (config.py), TF1-semantics RMSProp / LR schedule / EMA / L2 (optim.py),
strategies, the training loop and the `python -m efficientnet_tf.train` entry point.

Importing this package is cheap: it imports no submodule; import the one you need, e.g.
`from efficientnet_tf.train import loop, optim`. Configs live in efficientnet_tf.config.
"""
