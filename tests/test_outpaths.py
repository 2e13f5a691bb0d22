"""Every command that writes turns a missing folder, no permission or a full disk into one line,
exit 2 (evstream/outpaths.py).

A full disk is a real one: a 256 KiB tmpfs mounted in a private mount namespace (`unshare -rm`,
no root needed where user namespaces are allowed; skipped where they are not), with the command
run inside it, so nothing on this machine's file systems fills up.
"""

from __future__ import annotations

import errno
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from evstream.errors import EvstreamError
from evstream.outpaths import check_free, ensure_dir, output_errors, reason
from test_record import dv_events

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "models" / "evdistill-r18q-seg"


def _can_mount() -> bool:
    try:
        r = subprocess.run(["unshare", "-rm", "sh", "-c",
                            "d=$(mktemp -d) && mount -t tmpfs -o size=64k tmpfs $d"],
                           capture_output=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return r.returncode == 0


needs_mount = pytest.mark.skipif(not _can_mount(), reason="no user/mount namespaces here")


def on_full_disk(tmp_path, code: str, size: str = "256k", timeout: int = 120):
    """Run `code` (a shell line; $FULL is the small file system) with a `size` tmpfs mounted
    on $FULL in a private mount namespace."""
    full = tmp_path / "full"
    full.mkdir()
    line = f"mount -t tmpfs -o size={size} tmpfs {shlex.quote(str(full))} && {code}"
    return subprocess.run(["unshare", "-rm", "sh", "-c", line], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT, env={"FULL": str(full), "PATH": "/usr/bin:/bin",
                                                          "HOME": str(tmp_path)}), full


def evstream_line(*args) -> str:
    return " ".join([shlex.quote(sys.executable), "-m", "evstream", *map(shlex.quote, args)])


def one_line_error(r: subprocess.CompletedProcess, *words: str) -> str:
    err = r.stderr.strip().splitlines()
    assert r.returncode == 2, r.stderr[-2000:]
    assert "Traceback" not in r.stderr, r.stderr[-2000:]
    last = err[-1]
    for w in words:
        assert w in last, last
    return last


# -- the helpers ------------------------------------------------------------------------------

def test_ensure_dir_names_the_folder_and_why(tmp_path):
    assert ensure_dir(tmp_path / "a" / "b", "export").is_dir()
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(EvstreamError, match="exists and is not a folder"):
        ensure_dir(f, "export")
    with pytest.raises(EvstreamError, match=r"cannot create the run folder .*is not a folder"):
        ensure_dir(f / "sub", "run")


def test_output_errors_converts_environment_errors_only(tmp_path):
    with pytest.raises(EvstreamError, match=r"^x\.bin: cannot write the thing \(disk full\)$"):
        with output_errors("x.bin", "thing"):
            raise OSError(errno.ENOSPC, "No space left on device")
    with pytest.raises(OSError):               # not the user's environment: stays a crash
        with output_errors("x.bin", "thing"):
            raise OSError(errno.EBADF, "Bad file descriptor")
    assert reason(OSError(errno.EACCES, "Permission denied")) == "Permission denied"


def test_check_can_create(tmp_path):
    from evstream.outpaths import check_can_create
    check_can_create(tmp_path / "a" / "b", "run")
    assert not (tmp_path / "a").exists()                    # nothing made
    (tmp_path / "f").write_text("x")
    with pytest.raises(EvstreamError, match="is not a folder"):
        check_can_create(tmp_path / "f" / "run", "run")


def test_check_free(tmp_path):
    check_free(tmp_path / "not" / "yet", "video", need=1)       # nearest existing parent
    with pytest.raises(EvstreamError, match="disk full"):
        check_free(tmp_path, "video", need=1 << 62)


def test_atomic_write_names_the_path():
    from evstream.atomic import atomic_write
    with pytest.raises(EvstreamError, match=r"x\.png: cannot write the PNG file \(No such file"):
        atomic_write(Path("/proc/evstream-nope/x.png"), lambda f: f.write(b"x"), what="PNG file")


# -- missing folder / not a folder, through the commands -------------------------------------

@pytest.mark.parametrize("cmd", [
    ["export", str(MODEL), "--out", "{file}/sub"],
    ["train", "--preset", "tiny", "--data", "{file}", "--out", "{file}/run", "--stage", "1"],
    ["synth", "seg", "{file}/d", "--sequences", "1", "--seconds", "0.2"],
])
def test_output_under_a_file_is_one_line(tmp_path, cmd):
    from conftest import run_evstream
    f = tmp_path / "file"
    f.write_text("not a folder")
    r = run_evstream(*[a.format(file=f) for a in cmd], timeout=300)
    one_line_error(r, str(f), "not a folder")


# -- a full disk, for real ---------------------------------------------------------------------

@needs_mount
def test_torch_save_hides_enospc_behind_a_runtime_error(tmp_path):
    """The torch 2.13 bug nn.checkpoint.save_torch works around: torch.save straight to a file on
    a full file system fails with an 'unexpected pos' RuntimeError, not OSError(ENOSPC);
    through save_torch the same save is a one-line EvstreamError."""
    code = ("import torch, sys\n"
            "from evstream.nn.checkpoint import save_torch\n"
            "from evstream.errors import EvstreamError\n"
            "obj = {'w': torch.zeros(200_000)}\n"
            "try:\n"
            "    torch.save(obj, sys.argv[1] + '/raw.pt')\n"
            "except Exception as e:\n"
            "    print('raw', type(e).__name__, str(e)[:80])\n"
            "try:\n"
            "    save_torch(obj, sys.argv[1] + '/ours.pt')\n"
            "except EvstreamError as e:\n"
            "    print('ours', e)\n")
    script = tmp_path / "probe.py"
    script.write_text(code)
    r, _ = on_full_disk(tmp_path, f"{shlex.quote(sys.executable)} {script} $FULL")
    lines = dict(line.split(" ", 1) for line in r.stdout.strip().splitlines())
    assert lines["raw"].startswith("RuntimeError") and "unexpected pos" in lines["raw"], r.stdout
    assert lines["ours"].endswith("ours.pt: cannot write the checkpoint (disk full)"), r.stdout


@needs_mount
def test_export_to_a_full_disk(tmp_path):
    line = evstream_line("export", str(MODEL), "--out", "OUT").replace("OUT", "$FULL/x")
    r, _ = on_full_disk(tmp_path, line)
    one_line_error(r, "model.pt: cannot write the checkpoint (disk full)")


@needs_mount
@pytest.mark.parametrize("fmt", ["aedat4", "h5"])
def test_synth_to_a_full_disk(tmp_path, fmt):
    """dv-processing's writer would abort the process on the failed write, h5py would crash at
    exit: the free space is checked before either gets there."""
    line = evstream_line("synth", "seg", "OUT", "--sequences", "1", "--seconds", "0.3",
                         "--format", fmt, "--workers", "1").replace("OUT", "$FULL/d")
    r, _ = on_full_disk(tmp_path, line)
    one_line_error(r, "cannot write the dataset (disk full")


@needs_mount
@pytest.mark.parametrize("out", ["--png-dir", "--video"])
def test_viewer_outputs_on_a_full_disk(tmp_path, realdata, out):
    rec = realdata / "aedat4" / "davis346_aestream_davis.aedat4"
    target = "$FULL/p" if out == "--png-dir" else "$FULL/v.mp4"
    line = evstream_line("replay", str(rec), out, "TARGET", "--no-window", "--no-model",
                         "--lossless", "--speed", "max").replace("TARGET", target)
    r, _ = on_full_disk(tmp_path, line, size="1m", timeout=180)
    one_line_error(r, "disk full")


def record_on_full_disk(tmp_path, *args):
    """An evstream command recording into OUT on a 24 MiB file system -> (its result, a copy
    of OUT taken before the file system goes away)."""
    kept = tmp_path / "kept.aedat4"
    line = (evstream_line(*args).replace("OUT", "$FULL/x.aedat4")
            + f"; rc=$?; cp $FULL/x.aedat4 {shlex.quote(str(kept))}; exit $rc")
    r, _ = on_full_disk(tmp_path, line, size="24m")
    return r, kept


@needs_mount
def test_record_to_a_full_disk_keeps_what_it_recorded(tmp_path):
    """dv-processing 2.0.4 would abort on the failed write: the writer stops first, with room
    left to finish the file, which dv then reads."""
    r, kept = record_on_full_disk(tmp_path, "record", "OUT", "--source",
                                  "synthetic:?rate=5000000&duration=20")
    err = one_line_error(r, "disk full", "recording stopped", "keeps what was recorded")
    n = len(dv_events(kept))
    assert n > 0 and f"{n:,} events" in err, (n, err)
