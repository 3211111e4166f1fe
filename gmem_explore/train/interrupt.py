"""Ctrl-C during Trainer.fit stops at the end of the step under way, so the trainer is left between two whole steps:
weights, EMA, optimizer, step count and RNG agree, save_state then resumes exactly, and fit() goes on from there.

An interrupt that lands mid-step (between the optimizer step and the EMA update, or after the batch was drawn)
would leave a state that resumes to other weights. So while fit runs, the first SIGINT only sets a flag; the step
loop reduces it across processes with its other per-step flags (all processes stop after the same step) and raises
StopRequested, a KeyboardInterrupt, once the step and its callbacks are done. A second Ctrl-C interrupts at once
(plain KeyboardInterrupt: the trainer may then be mid-step). Off the main thread (where Python takes no signal
handler), and where SIGINT is ignored or handled outside Python, Ctrl-C behaves as usual.
"""
from __future__ import annotations

import signal
import sys
import threading
from contextlib import contextmanager


class StopRequested(KeyboardInterrupt):
    """Ctrl-C, honoured between two steps: the trainer's state is whole (gmem train saves it before exiting)."""


class InterruptFlag:
    def __init__(self):
        self.requested = False


@contextmanager
def deferred_interrupt(announce: bool = True):
    """While inside, the first SIGINT sets flag.requested (and says so on stderr when `announce`); the second calls
    the handler that was there before (Python's raises KeyboardInterrupt). The previous handler is restored after."""
    flag = InterruptFlag()
    previous = signal.getsignal(signal.SIGINT) if threading.current_thread() is threading.main_thread() else None
    if previous is None or previous == signal.SIG_IGN:
        # off the main thread; a handler set outside Python, which could not be put back; or Ctrl-C ignored (a job
        # started with nohup or `&`), which must stay ignored
        yield flag
        return

    def handler(signum, frame):
        if flag.requested:
            if callable(previous):
                previous(signum, frame)
            raise KeyboardInterrupt
        flag.requested = True
        if announce:
            print("\ninterrupt: stopping after this step (Ctrl-C again to stop at once, mid-step)", file=sys.stderr,
                  flush=True)

    signal.signal(signal.SIGINT, handler)
    try:
        yield flag
    finally:
        signal.signal(signal.SIGINT, previous)
