"""Child processes that a test interrupts with SIGINT.

A job started in the background by a non-interactive shell (``.ci/run &``, ``nohup``) ignores SIGINT, and
its children inherit that: Python then never installs its KeyboardInterrupt handler, and a test's SIGINT
would be lost. ``Popen(..., preexec_fn=sigint_reachable)`` gives the child the default disposition, as a
terminal's Ctrl-C would find it.
"""

from __future__ import annotations

import signal


def sigint_reachable() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)
