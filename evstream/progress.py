"""Progress on stderr that reads well in a terminal and in a log file.

    bar = progress(total=600, desc="stage 2 (student)", unit="it", enabled=not args.quiet)
    bar.update(1); bar.set_postfix(loss="0.41"); bar.write("val mIoU 41.2%"); bar.close()

In a terminal this is a tqdm bar. When stderr is not a terminal (a log file, a pipe, a CI job)
tqdm's carriage-return redraws would pile up into one enormous line, so a `LineProgress` prints
a whole line instead, at most every `LINE_EVERY_S` seconds and once at the end:

    stage 2 (student): 120/600 it (20%), 2.1 it/s, 3m48s left, loss=0.41

`enabled=False` (the commands' --quiet / --no-progress) prints nothing at all. Both kinds take
the same calls: update(n), set_postfix(**kv), write(msg), close(); `n` is the count so far.
"""

from __future__ import annotations

import sys
import time

LINE_EVERY_S = 30.0


def progress(total: int | None = None, desc: str = "", unit: str = "it", enabled: bool = True,
             initial: int = 0, unit_scale: bool = False, leave: bool = True, stream=None):
    """A tqdm bar on a terminal, a LineProgress elsewhere, a silent one when not enabled."""
    stream = stream or sys.stderr
    if enabled and _isatty(stream):
        from tqdm import tqdm

        return tqdm(total=total, desc=desc, unit=unit, initial=initial, unit_scale=unit_scale,
                    leave=leave, file=stream, dynamic_ncols=True)
    return LineProgress(total=total, desc=desc, unit=unit, initial=initial,
                        unit_scale=unit_scale, enabled=enabled, stream=stream)


def _isatty(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _count(n: float, scale: bool) -> str:
    if not scale:
        return f"{int(n):,}"
    for div, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= div:
            return f"{n / div:.2f}{suffix}"
    return f"{int(n)}"


def _duration(s: float) -> str:
    s = int(round(s))
    h, m, sec = s // 3600, s // 60 % 60, s % 60
    return f"{h}h{m:02d}m" if h else f"{m}m{sec:02d}s" if m else f"{sec}s"


class LineProgress:
    """Whole lines of progress, at most every `every_s` seconds (see the module doc)."""

    def __init__(self, total: int | None = None, desc: str = "", unit: str = "it",
                 initial: int = 0, unit_scale: bool = False, enabled: bool = True,
                 stream=None, every_s: float = LINE_EVERY_S, clock=time.monotonic):
        self.total, self.desc, self.unit = total, desc, unit
        self.n = initial
        self.unit_scale, self.enabled = unit_scale, enabled
        self.stream = stream or sys.stderr
        self.every_s = every_s
        self._clock = clock
        self._t0 = self._last = clock()
        self._n0 = initial
        self._postfix = ""
        self._closed = False
        self.lines = 0

    def update(self, n: float = 1) -> None:
        self.n += n
        now = self._clock()
        if now - self._last >= self.every_s:
            self._last = now
            self._print(now)

    def set_postfix(self, **kv) -> None:
        self._postfix = ", ".join(f"{k}={v}" for k, v in kv.items())

    def write(self, msg: str, file=None) -> None:
        """A message line (not progress: printed even when disabled, like tqdm.write)."""
        print(msg, file=file or self.stream, flush=True)

    def line(self, now: float | None = None) -> str:
        now = self._clock() if now is None else now
        done = _count(self.n, self.unit_scale)
        parts = [f"{done}/{_count(self.total, self.unit_scale)} {self.unit}" if self.total
                 else f"{done} {self.unit}"]
        if self.total:
            parts[0] += f" ({100.0 * self.n / self.total:.0f}%)"
        dt = now - self._t0
        rate = (self.n - self._n0) / dt if dt > 0 else 0.0
        if rate > 0:
            parts.append(f"{_count(rate, self.unit_scale) if self.unit_scale else f'{rate:.3g}'} "
                         f"{self.unit}/s")
            if self.total and self.n < self.total:
                parts.append(f"{_duration((self.total - self.n) / rate)} left")
        if self._postfix:
            parts.append(self._postfix)
        head = f"{self.desc}: " if self.desc else ""
        return head + ", ".join(parts)

    def _print(self, now: float) -> None:
        if self.enabled:
            print(self.line(now), file=self.stream, flush=True)
            self.lines += 1

    def close(self) -> None:
        """The final line, where an earlier one was printed (a job shorter than every_s leaves
        a log as it was)."""
        if not self._closed:
            self._closed = True
            if self.lines:
                self._print(self._clock())
