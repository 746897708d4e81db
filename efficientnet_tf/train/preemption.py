"""SIGTERM or Ctrl-C (SIGINT) -> a checkpoint at the current step, then a clean exit.

Why not tf.distribute.experimental.PreemptionCheckpointHandler (TF 2.21): on a Cloud TPU VM or
a GCE CPU VM (detected from the metadata server) it only logs that it does not support them and
its save_checkpoint_if_preempted returns at once, so SIGTERM still kills the job there; elsewhere
it saves one call of the training function after the signal, adds its own counter to our
checkpoint and exits with code 42. This module does the same job on every platform.

The watcher's flag is a host (CPU) variable that the compiled training loop reads before each
step, so a long steps_per_execution loop stops at the next step, not at its end. Python runs
signal handlers only between bytecodes of the main thread, which sits inside the compiled call,
so the flag is set from a thread woken by signal.set_wakeup_fd (written by the C-level handler
the moment the signal arrives). With several
workers the flag is all-reduced (summed) before each step, so every worker stops at the same step
and takes part in the same save.
"""
from __future__ import annotations

import os
import signal
import threading

import tensorflow as tf

EXIT_CODE = 143  # 128 + SIGTERM, what TensorFlow's handler uses on GCE for "restart me"
EXIT_CODES = {signal.SIGTERM: 143, signal.SIGINT: 130}
NAMES = {signal.SIGTERM: "SIGTERM", signal.SIGINT: "SIGINT (Ctrl-C)"}


class SigtermWatcher:
    """Context manager: while inside, SIGTERM or SIGINT (Ctrl-C) sets `flag` (a CPU tf.Variable)
    instead of killing the process; `signum` says which came first. A second Ctrl-C ends the
    process at once (exit 130), without saving. The previous handlers are put back on exit."""

    def __init__(self):
        with tf.device("/cpu:0"):
            self.flag = tf.Variable(0, trainable=False, dtype=tf.int32, name="sigterm")
        self.received = threading.Event()
        self.signum = None
        self._previous = {}
        self._previous_fd = self._pipe = self._thread = None

    @property
    def exit_code(self) -> int:
        return EXIT_CODES.get(self.signum, EXIT_CODE)

    @property
    def name(self) -> str:
        return NAMES.get(self.signum, "SIGTERM")

    def _handle(self, signum=signal.SIGTERM):
        if signum == signal.SIGINT and self.signum == signal.SIGINT:
            os.write(2, b"Second Ctrl-C: stopping now, without saving this step.\n")
            os._exit(130)
        if self.signum is None:
            self.signum = signum
            if signum == signal.SIGINT:
                os.write(2, b"Ctrl-C: saving a checkpoint at the current step, then stopping "
                            b"(Ctrl-C again to stop without saving).\n")
        self.flag.assign(1)
        self.received.set()  # after the flag: whoever wakes on `received` sees it set

    def _watch(self, read_fd):
        while True:
            data = os.read(read_fd, 64)
            if not data:  # write end closed: __exit__
                return
            for signum in data:
                if signum in EXIT_CODES:
                    self._handle(signal.Signals(signum))

    def __enter__(self):
        self.received.clear()
        self.signum = None
        self.flag.assign(0)
        if threading.current_thread() is not threading.main_thread():
            return self  # signal handlers can only be set from the main thread
        # The Python-level handlers do nothing: the watcher thread acts on the wakeup fd, which
        # the C-level handler writes the moment a signal arrives.
        for signum in EXIT_CODES:
            self._previous[signum] = signal.signal(signum, lambda *_: None)
        self._pipe = os.pipe()
        os.set_blocking(self._pipe[1], False)
        self._previous_fd = signal.set_wakeup_fd(self._pipe[1])
        self._thread = threading.Thread(target=self._watch, args=(self._pipe[0],), daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        if self._thread is None:
            return False
        signal.set_wakeup_fd(self._previous_fd)
        # None: the previous handler was not set from Python; the default is the closest.
        for signum, previous in self._previous.items():
            signal.signal(signum, signal.SIG_DFL if previous is None else previous)
        os.close(self._pipe[1])
        self._thread.join()
        os.close(self._pipe[0])
        self._previous, self._previous_fd, self._pipe, self._thread = {}, None, None, None
        return False


def num_workers(strategy) -> int:
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or isinstance(strategy, tf.distribute.TPUStrategy):
        return 1
    jobs = resolver.cluster_spec().as_dict()
    return sum(len(tasks) for name, tasks in jobs.items() if name in ("chief", "worker")) or 1
