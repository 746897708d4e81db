"""What the command-line entry points share (absl only). The library never reads flags."""
from __future__ import annotations

import sys

from absl import app, flags


def run(main, module: str) -> None:
    """app.run(main), with the flags that `module` defined listed by --help.

    absl's --help lists the flags of the file that was started (sys.argv[0]). A console script
    (efficientnet-train) or `python -m efficientnet_tf.train` starts a file that defines none,
    so --help listed nothing; the defining module's flags are made key flags of that file."""
    for flag in flags.FLAGS.get_flags_for_module(module):
        flags.FLAGS.register_key_flag_for_module(sys.argv[0], flag)
    app.run(main)
