"""Progress that reads well in a log (evstream/progress.py)."""

from __future__ import annotations

import io
import subprocess
import sys

from evstream.progress import LineProgress, progress


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_line_progress_prints_whole_lines_at_most_every_interval():
    out, clock = io.StringIO(), Clock()
    bar = LineProgress(total=600, desc="stage 2 (student)", unit="it", stream=out, every_s=30,
                       clock=clock)
    for _ in range(100):              # 100 it in 25 s: no line yet
        clock.t += 0.25
        bar.update(1)
    assert out.getvalue() == ""
    for _ in range(60):               # reaches 30 s once (at 120 it), ends at 40 s
        clock.t += 0.25
        bar.update(1)
    bar.set_postfix(loss="0.41")
    bar.close()
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue() and len(lines) == 2
    assert lines[0] == "stage 2 (student): 120/600 it (20%), 4 it/s, 2m00s left"
    assert lines[1] == "stage 2 (student): 160/600 it (27%), 4 it/s, 1m50s left, loss=0.41"


def test_short_jobs_and_disabled_bars_print_nothing():
    out, clock = io.StringIO(), Clock()
    bar = LineProgress(total=10, stream=out, clock=clock)
    clock.t = 5.0
    bar.update(10)
    bar.close()
    quiet = LineProgress(total=10, stream=out, enabled=False, every_s=0, clock=clock)
    quiet.update(5)
    quiet.close()
    assert out.getvalue() == ""


def test_unit_scale_and_no_total():
    out, clock = io.StringIO(), Clock()
    bar = LineProgress(unit="ev", unit_scale=True, desc="x.aedat4", stream=out, every_s=1,
                       clock=clock)
    clock.t = 2.0
    bar.update(25_000_000)
    assert out.getvalue() == "x.aedat4: 25.00M ev, 12.50M ev/s\n"


def test_a_pipe_gets_lines_and_a_terminal_a_tqdm_bar():
    assert isinstance(progress(total=3, stream=io.StringIO()), LineProgress)


def test_synth_log_is_lines_not_carriage_returns(tmp_path):
    """A real command whose stderr is a file: no carriage returns, whatever the length."""
    log = tmp_path / "synth.log"
    with open(log, "w") as err:
        r = subprocess.run([sys.executable, "-m", "evstream", "synth", "seg", str(tmp_path / "d"),
                            "--sequences", "1", "--seconds", "0.2", "--width", "64",
                            "--height", "48"], stderr=err, stdout=subprocess.PIPE, timeout=300)
    assert r.returncode == 0
    assert "\r" not in log.read_text()
