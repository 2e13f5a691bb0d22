"""What every stage process does around its work: signals, the control link, error reporting.

    def my_stage(config, endpoints):
        with stage_context(endpoints, "name") as link:
            ...open resources...; link.ready(...); info = link.wait_start(); ...work...

Before anything else the process stops glibc from handing freed heap back to the kernel
(stream/heap.py): re-faulting it cost the source ~16 ms per 10 M events.

On leaving the block the process exits: 0 when the work finished or the launcher asked it to stop,
2 after a user error (`EvstreamError`, reported as one line), 1 after anything else (reported with
its traceback). SIGINT is ignored in stages: Ctrl-C reaches the whole process group, and only the
launcher decides how the pipeline stops (it sends `stop`, then terminates whatever lingers).

A stage whose launcher dies (stream/lifeline.py: the process was started by `lifeline.stage_main`,
which tied it to the launcher first) gets `LauncherGone` wherever it is; its `finally` blocks
release what it holds, and it exits with lifeline.ORPHAN_EXIT_CODE, closing zmq without linger,
reporting nothing and skipping the interpreter's teardown.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal

import zmq

from evstream.errors import EvstreamError
from evstream.stream.control import AFTER_DONE_NICE, StageLink, StopRequested
from evstream.stream.curve import stop_authenticators
from evstream.stream.heap import keep_heap
from evstream.stream.lifeline import (ORPHAN_EXIT_CODE, LauncherGone, exit_now, exit_orphan,
                                      leaving, orphaned)


@contextlib.contextmanager
def stage_context(endpoints: dict, stage: str):
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    keep_heap()
    logging.basicConfig(level=int(os.environ.get("EVSTREAM_LOGLEVEL", logging.WARNING)),
                        format=f"evstream[{stage}]: %(levelname)s: %(message)s")
    link = StageLink(endpoints["control"], stage, nice_after_done=AFTER_DONE_NICE)
    code = 0
    try:
        yield link
        link.done()
    except StopRequested:
        link.done()
    except LauncherGone:
        code = ORPHAN_EXIT_CODE
    except EvstreamError as e:
        link.error(e, user=True)
        code = 2
    except BaseException as e:  # noqa: BLE001 - reported to the launcher with its traceback
        link.error(e, user=False)
        code = 1
    finally:
        leaving()
        if orphaned():
            code = ORPHAN_EXIT_CODE
        link.close()
        # Terminate zmq before the interpreter frees memory: zmq's I/O thread may still be
        # sending zero-copy buffers, and freeing them under it aborts the process
        # ("Bad address (src/tcp.cpp:227)", libzmq 4.3 via pyzmq 27). destroy() closes what is
        # left open with a bounded linger, then waits for pending sends.
        stop_authenticators()
        zmq.Context.instance().destroy(linger=0 if orphaned() else 2000)
        if orphaned():
            exit_orphan()
    # Everything the stage holds was released above (its own `finally` blocks closed files,
    # recordings, the ring and the slots; zmq delivered what it queued): the interpreter's
    # teardown (module and Numba/torch clean-up, 0.1-0.5 s) is skipped, since the launcher
    # waits for every stage to exit before it returns.
    exit_now(code)
