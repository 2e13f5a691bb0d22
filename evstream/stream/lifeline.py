"""No stage outlives its launcher, and a launcher cleans up after one that was killed.

    stage_main(launcher_pid, module, function, cfg, endpoints)   # every stage process's target
    removed = remove_stale()        # launcher, at start: [(pid, segment names)] it removed

A stage's lifeline. The first thing a stage process does (before importing its stage module)
is `bind_to_launcher`: it asks the kernel for LIFELINE_SIGNAL (SIGUSR1) when its parent dies
(prctl PR_SET_PDEATHSIG, Linux), then checks that the launcher is still its parent (it may have
died between the fork and the prctl; then the stage exits at once). Where prctl does not exist,
a watchdog thread waits on multiprocessing's parent sentinel (a pipe the launcher holds open,
closed by the kernel when it dies), checks the parent pid twice a second, and sends the process
the same signal itself. `bind_to_launcher(..., use_prctl=False)` forces the fallback.

The kernel sends the death signal when the launcher's *thread* that started the stage exits,
and again each time the stage is handed to another thread of the launcher (zmq's I/O threads
outlive the main thread by a moment when the launcher is killed). So the signal only means
"look": the handler acts when the launcher is really gone (the stage's parent pid is no longer
the launcher's, or the watchdog saw it leave), and otherwise waits for the next one. SIGTERM is
left alone: the launcher's own `terminate()` of a stage ends it at once, as before.

When the launcher is gone the stage is an orphan: every socket made by stream/sockets.py gets
linger 0 and no send timeout (nobody is left to deliver to), `LauncherGone` is raised in the
main thread, so the stage's `finally` blocks run (the source closes the camera and its
recording, readers leave the ring, slots and ring are unmapped), and stage_context exits with
ORPHAN_EXIT_CODE without trying to report. An interval timer (SIGALRM, default action: the
kernel ends the process and releases all it holds) fires ORPHAN_EXIT_S after the signal
whatever the stage was doing, so an orphan never outlives its launcher by more than a second.
Measured on the loaded 2-core machine: 45-70 ms from the launcher's SIGKILL to the last stage
of a --no-model replay gone, each through its `finally` blocks, about 150 ms with the torch
worker (tests/test_orphans.py).

Segments left behind. The ring and the window slots are named `evstream_<launcher pid>_<hex>`
(`_w` for slots) and unlinked by the launcher on every path it controls. A SIGKILL leaves them
to the launcher's multiprocessing resource tracker, which unlinks them once every stage has
exited (it prints "leaked shared_memory objects"); if the tracker dies too (the whole process
group killed, the OOM killer), they stay. `remove_stale` finds segments whose creator is not
running: no such pid, a zombie, or a pid now used by a process that started after the segment
was made (pid reuse; a live creator always started before its segment). Its private ipc
directories (`evstream-<pid>-*` in the temporary directory) go the same way.
"""

from __future__ import annotations

import ctypes
import importlib
import os
import re
import shutil
import signal
import sys
import tempfile
import threading
import time

PR_SET_PDEATHSIG = 1
LIFELINE_SIGNAL = signal.SIGUSR1
ORPHAN_EXIT_S = 0.8
ORPHAN_EXIT_CODE = 3
WATCH_INTERVAL_S = 0.5
SHM_DIR = "/dev/shm"
SEGMENT_RE = re.compile(r"^evstream_(\d+)_[0-9a-f]+(_w)?$")
IPC_DIR_RE = re.compile(r"^evstream-(\d+)-")


class LauncherGone(Exception):
    """Raised in a stage's main thread when its launcher has died."""


_launcher_pid: int | None = None
_parent_gone = False        # the watchdog saw the launcher leave
_orphaned = False           # the launcher was found gone
_leaving = False            # the stage is tearing down: no exception from the handler now
START_TIMES: dict = {}      # monotonic s: "main" (stage_main entered), "imported" (its module)
_on_orphaned: list = []     # callbacks run by the handler (stream/sockets.py registers one)


def orphaned() -> bool:
    """Has this stage lost its launcher? (Senders then stop waiting for anyone.)"""
    return _orphaned


def when_orphaned(fn) -> None:
    """Run `fn()` in the signal handler when the launcher is found gone (before LauncherGone)."""
    if fn not in _on_orphaned:
        _on_orphaned.append(fn)


def leaving() -> None:
    """The stage is past its work: a late orphan signal only arms the exit timer."""
    global _leaving
    _leaving = True


def bind_to_launcher(launcher_pid: int, use_prctl: bool = True) -> str:
    """Tie this process's life to `launcher_pid` (see the module comment) -> "prctl" or
    "watchdog". Exits the process at once if the launcher is already gone."""
    global _launcher_pid
    _launcher_pid = launcher_pid
    signal.signal(LIFELINE_SIGNAL, _on_lifeline_signal)
    how = "watchdog"
    if use_prctl and sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            if libc.prctl(PR_SET_PDEATHSIG, int(LIFELINE_SIGNAL), 0, 0, 0) == 0:
                how = "prctl"
        except (OSError, AttributeError):
            pass
    # the race: a launcher that died before the prctl sent no signal
    if os.getppid() != launcher_pid:
        os._exit(ORPHAN_EXIT_CODE)
    if how == "watchdog":
        threading.Thread(target=_watch, args=(launcher_pid,), name="evstream-lifeline",
                         daemon=True).start()
    return how


def _watch(launcher_pid: int) -> None:
    import multiprocessing

    global _parent_gone
    parent = multiprocessing.parent_process()
    while os.getppid() == launcher_pid and (parent is None or parent.is_alive()):
        if parent is not None:
            parent.join(WATCH_INTERVAL_S)        # returns when the sentinel pipe closes
        else:
            time.sleep(WATCH_INTERVAL_S)
    _parent_gone = True
    os.kill(os.getpid(), LIFELINE_SIGNAL)


def _on_lifeline_signal(signum, frame):
    global _orphaned
    if _orphaned or not (_parent_gone or os.getppid() != _launcher_pid):
        return          # a thread of the launcher ended, not the launcher: wait for the next
    _orphaned = True
    signal.setitimer(signal.ITIMER_REAL, ORPHAN_EXIT_S)     # SIGALRM's default ends it
    for fn in _on_orphaned:
        try:
            fn()
        except Exception:  # noqa: BLE001 - best effort: the timer still ends the process
            pass
    if not _leaving:
        raise LauncherGone(f"the launcher (pid {_launcher_pid}) is gone")


def stage_main(launcher_pid: int, module: str, function: str, cfg, endpoints: dict) -> None:
    """The target of every stage process: the lifeline first, then the stage's imports (the
    worker's take seconds) and its function."""
    START_TIMES["main"] = time.monotonic()
    # a forked stage (pipeline.start_method) starts with the launcher's handlers: its SIGTERM
    # handler raises the launcher's own exception. A stage is terminated like any process.
    # (SIGINT stays ignored: the launcher turns Ctrl-C into `stop`.)
    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGALRM):
        signal.signal(sig, signal.SIG_DFL)
    bind_to_launcher(launcher_pid)
    try:
        fn = getattr(importlib.import_module(module), function)
        START_TIMES["imported"] = time.monotonic()
        fn(cfg, endpoints)
    except LauncherGone:
        exit_orphan()


def exit_orphan() -> None:
    """End an orphan now: what it held is released (its `finally` blocks ran, the kernel takes
    the rest); the interpreter's own teardown (0.3-0.5 s of module and Numba clean-up on a busy
    machine) is skipped."""
    exit_now(ORPHAN_EXIT_CODE, log=False)


def exit_now(code: int, log: bool = True) -> None:
    """End this process with `code` once everything it holds is released: logging and the
    standard streams flushed, the interpreter's teardown skipped (a stage, an orphan, and the
    `run`/`replay` launcher after its summary)."""
    if log:
        import logging

        logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


# -- what a killed launcher left ------------------------------------------------------------------

def _proc_start_time(pid: int) -> float | None:
    """When process `pid` started (time.time() scale), or None if it is not running (gone or a
    zombie). Raises PermissionError where /proc hides it."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return None
    if fields[0] in ("Z", "X"):
        return None
    ticks = int(fields[19])             # field 22 of stat: start time in clock ticks since boot
    since_boot = time.clock_gettime(time.CLOCK_BOOTTIME)
    return time.time() - since_boot + ticks / os.sysconf("SC_CLK_TCK")


def creator_gone(pid: int, made_at: float) -> bool:
    """Is the process that made something at `made_at` (time.time()) with pid `pid` gone?
    True when no such process runs (or it is a zombie), or when the process with that pid
    started later (the pid was reused). Unknown (no permission): False."""
    if pid == os.getpid():
        return False
    if os.path.isdir("/proc/self"):
        try:
            started = _proc_start_time(pid)
        except (OSError, ValueError, IndexError):
            return False
        return started is None or started > made_at + 0.1    # ticks are 10 ms: a margin
    try:                                # no /proc: only "is there such a pid"
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:
        pass
    return False


def stale_segments(shm_dir: str = SHM_DIR) -> dict[int, list[str]]:
    """{pid: [segment names]} of evstream segments whose creator is gone."""
    out: dict[int, list[str]] = {}
    try:
        names = os.listdir(shm_dir)
    except OSError:
        return out
    for name in sorted(names):
        m = SEGMENT_RE.match(name)
        if not m:
            continue
        try:
            made_at = os.stat(os.path.join(shm_dir, name)).st_mtime
        except OSError:
            continue
        pid = int(m.group(1))
        if creator_gone(pid, made_at):
            out.setdefault(pid, []).append(name)
    return out


def remove_stale(shm_dir: str = SHM_DIR, tmp_dir: str | None = None) -> list[tuple[int, list[str]]]:
    """Unlink the segments of launchers that are gone, and their ipc directories ->
    [(pid, names removed)] (only pids with segments that this process could remove)."""
    removed = []
    for pid, names in stale_segments(shm_dir).items():
        gone = []
        for name in names:
            try:
                os.unlink(os.path.join(shm_dir, name))
                gone.append(name)
            except FileNotFoundError:   # its resource tracker got there first
                pass
            except OSError:             # another user's (sticky /dev/shm)
                pass
        if gone:
            removed.append((pid, gone))
    tmp_dir = tmp_dir or tempfile.gettempdir()
    try:
        entries = os.listdir(tmp_dir)
    except OSError:
        entries = []
    for entry in entries:
        m = IPC_DIR_RE.match(entry)
        path = os.path.join(tmp_dir, entry)
        if not m or not os.path.isdir(path):
            continue
        try:
            made_at = os.stat(path).st_mtime
        except OSError:
            continue
        if creator_gone(int(m.group(1)), made_at):
            shutil.rmtree(path, ignore_errors=True)
    return removed


def stale_message(pid: int, names: list[str]) -> str:
    n = len(names)
    return (f"evstream: removed {n} shared-memory segment{'s' if n != 1 else ''} left by "
            f"process {pid} (no longer running)")
