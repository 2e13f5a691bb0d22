"""Every CUDA path of evstream checked in one command, with a report (JSON and markdown).

    tools/gpu_check                       # everything this machine can run (one GPU: < 8 min)
    tools/gpu_check --quick               # CPU-sized; without a GPU: the checks that need none
    tools/gpu_check --list                # the checks and what each needs
    tools/gpu_check --only fp32,replay    # some of them
    tools/gpu_check --out DIR             # report folder (default gpu-check-out/)

On a GPU machine that reaches no package registry and holds another Python (say 3.12 with its
own torch + CUDA, numba, h5py, opencv-headless, but no pyzmq or dv-processing), the one prepared
command is, first where a registry is reachable:

    tools/gpu_wheels.sh                   # the cp312 wheels evstream adds, into gpu-wheels/

then, with gpu-wheels/ beside the source tree on the GPU machine:

    tools/gpu_check

evstream itself is imported from this tree. Before the checks, when this Python lacks a module
evstream needs, the script makes .gpu-venv/ (a venv without pip, plus a .pth file naming this
Python's own site folders: its torch and numpy stay the ones used, even when this Python is
itself a venv or a conda environment, whose packages a plain --system-site-packages venv would
not see; pip too comes from there), installs the missing wheels from gpu-wheels/ (pip
--no-index) and evstream from the source tree (editable, --no-deps, --no-build-isolation), and
runs itself again there. Nothing is fetched from a network. A module missing with no wheel for
it is one line, exit 2.

Report: OUT/GPU_CHECK.json and OUT/GPU_CHECK.md (every check: passed / failed / skipped with the
reason, its one-line result, metrics and tolerance); work files in OUT/work/. Exit status: 0 when
no check failed (skipped ones are listed), 1 when one did, 2 for a usage or set-up error.
Checks past --budget-s (default 470 s) are skipped as "over the time budget", so a device call
with a 10-minute limit always gets its report.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import shutil
import site
import subprocess
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WHEELS = ROOT / "gpu-wheels"
VENV = ROOT / ".gpu-venv"
MARK = "EVSTREAM_GPU_CHECK_VENV"
# (module, the wheel that provides it or None where the machine must already have it)
NEEDED = [("torch", None), ("numpy", None), ("numba", None), ("h5py", None), ("cv2", None),
          ("zmq", "pyzmq"), ("dv_processing", "dv-processing"), ("tqdm", "tqdm")]


# -- set-up: evstream and its modules in this Python, from the source tree -----------------------

def _say(msg: str) -> None:
    print(f"gpu_check: {msg}", file=sys.stderr, flush=True)


def _run(cmd: list[str]) -> str:
    r = subprocess.run(cmd, text=True, capture_output=True)
    if r.returncode:
        tail = " | ".join((r.stderr or r.stdout).strip().splitlines()[-3:])
        raise SystemExit(f"gpu_check: error: {' '.join(cmd[:4])} ... failed: {tail}")
    return r.stdout


def make_venv(venv: Path) -> Path:
    """venv/ without pip, seeing this interpreter's site folders through a .pth file."""
    vpy = venv / "bin" / "python"
    if not vpy.exists():
        _say(f"making {venv} (it sees {sys.executable}'s packages)")
        _run([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    own = [p for p in [*site.getsitepackages(), site.getusersitepackages()]
           if os.path.isdir(p)]
    purelib = _run([str(vpy), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"])
    Path(purelib.strip(), "_gpu_check_parent.pth").write_text("\n".join(own) + "\n")
    return vpy


def bootstrap(argv: list[str], needed=NEEDED, venv: Path = VENV) -> None:
    """Return when this Python can run the checks; else set up the venv and exec there."""
    sys.path.insert(0, str(ROOT))    # evstream from this tree, installed or not (the checks'
    missing = [(m, w) for m, w in needed  # commands run `python -m evstream` in ROOT)
               if importlib.util.find_spec(m) is None]
    if not missing:
        return
    if os.environ.get(MARK):
        raise SystemExit(f"gpu_check: error: still missing after the install: "
                         f"{', '.join(m for m, _ in missing)}")
    base = [m for m, w in missing if w is None]
    if base:
        raise SystemExit(f"gpu_check: error: this Python ({sys.executable}) lacks "
                         f"{', '.join(base)}, which gpu-wheels/ does not carry: run with a "
                         f"Python that has torch, numpy, numba, h5py and OpenCV (PYTHON=...)")
    wheels = [w for _, w in missing if w]
    if wheels and not any(WHEELS.glob("*.whl")):
        raise SystemExit(f"gpu_check: error: this Python lacks {', '.join(wheels)} and "
                         f"{WHEELS} holds no wheels: run tools/gpu_wheels.sh where a registry "
                         f"is reachable and copy gpu-wheels/ here")
    if importlib.util.find_spec("pip") is None:
        raise SystemExit(f"gpu_check: error: {sys.executable} has no pip to install "
                         f"{', '.join(wheels) or 'evstream'} with")
    vpy = make_venv(venv)
    if importlib.util.find_spec("setuptools") is None:
        wheels.append("setuptools")
    if wheels:
        _say(f"installing {', '.join(wheels)} from {WHEELS.name}/")
        _run([str(vpy), "-m", "pip", "install", "-q", "--no-index", "--find-links", str(WHEELS),
              "--disable-pip-version-check", *wheels])
    _say("installing evstream from the source tree (editable)")
    _run([str(vpy), "-m", "pip", "install", "-q", "--no-index", "--no-deps",
          "--no-build-isolation", "--disable-pip-version-check", "-e", str(ROOT)])
    os.environ[MARK] = "1"
    os.execv(str(vpy), [str(vpy), str(Path(__file__).resolve()), *argv])


# -- running the checks -------------------------------------------------------------------------

def run_checks(args) -> dict:
    import torch

    sys.path.insert(0, str(ROOT / "tools"))
    import gpu_checks as G

    cuda = torch.cuda.is_available() and not args.no_cuda
    out = Path(args.out)
    work = out / "work"
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    ctx = G.Ctx(work=work, quick=args.quick, cuda=cuda, rehearse=args.rehearse and not cuda)
    wanted = set(args.only.split(",")) if args.only else None
    t_start = time.perf_counter()
    results = []
    chosen = [c for c in G.CHECKS if wanted is None or c.name in wanted]
    for i, c in enumerate(chosen, 1):
        res = {"name": c.name, "needs": c.needs or "-", "title": c.title}
        t0 = time.perf_counter()
        reason = _skip_reason(c, ctx, args, time.perf_counter() - t_start)
        if reason:
            res.update(status="skipped", summary=reason)
        else:
            try:
                res.update(c.run(ctx), status="passed")
            except G.Skip as e:
                res.update(status="skipped", summary=str(e))
            except G.Failed as e:
                res.update(status="failed", summary=str(e))
            except Exception as e:  # noqa: BLE001 - any error is that check's failure
                first = (str(e).strip().splitlines() or [""])[0][:300]
                res.update(status="failed", summary=f"{type(e).__name__}: {first}",
                           traceback=traceback.format_exc()[-3000:])
        if res["status"] == "failed":
            ctx.cache[f"failed:{c.name}"] = True
        res["seconds"] = round(time.perf_counter() - t0, 2)
        results.append(res)
        _say(f"[{i}/{len(chosen)}] {c.name}: {res['status']} ({res['seconds']:.1f} s) "
             f"{res['summary']}")
    env = next((r.get("metrics", {}) for r in results if r["name"] == "environment"), {})
    counts = {s: sum(r["status"] == s for r in results) for s in ("passed", "failed", "skipped")}
    return {"format": "evstream-gpu-check", "version": 1,
            "when": time.strftime("%Y-%m-%d %H:%M:%S %z"), "host": platform.node(),
            "mode": "gpu" if cuda else ("rehearsal" if ctx.rehearse else "cpu"),
            "quick": args.quick, "environment": env,
            "seconds": round(time.perf_counter() - t_start, 1), **counts,
            "skipped_checks": [r["name"] for r in results if r["status"] == "skipped"],
            "checks": results, "tolerances": G.TOLERANCE,
            "latency_goal_p99_ms": G.LATENCY_GOAL_P99_MS}


def _skip_reason(c, ctx, args, elapsed: float) -> str:
    if c.needs == "gpu" and not ctx.cuda and not ctx.rehearse:
        return "needs a CUDA device (none here)"
    if c.needs == "gpus2":
        import torch

        if not ctx.cuda or torch.cuda.device_count() < 2:
            n = torch.cuda.device_count() if ctx.cuda else 0
            return f"needs 2 CUDA devices ({n} here)"
    if c.slow_on_cpu and args.quick and not ctx.cuda:
        return "--quick on CPU (about 30 s here; runs without --quick)"
    if elapsed > args.budget_s and c.name != "environment":
        return f"over the time budget ({elapsed:.0f} s > {args.budget_s:g} s)"
    return ""


# -- the report ---------------------------------------------------------------------------------

MARKS = {"passed": "pass", "failed": "**FAIL**", "skipped": "skip"}


def markdown(rep: dict) -> str:
    env = rep["environment"]
    lines = ["# evstream GPU check", "",
             f"{rep['when']} on {rep['host']}: {env.get('gpu', 'no GPU')}, torch "
             f"{env.get('torch', '?')} (CUDA {env.get('cuda')}), Python {env.get('python', '?')}, "
             f"evstream {env.get('evstream_commit', '?')}; mode {rep['mode']}"
             f"{' --quick' if rep['quick'] else ''}, {rep['seconds']} s.", "",
             f"**{rep['passed']} passed, {rep['failed']} failed, {rep['skipped']} skipped.**", "",
             "| check | needs | result | s | what it found |", "|---|---|---|---:|---|"]
    for r in rep["checks"]:
        summary = r["summary"].replace("|", "/")
        lines.append(f"| {r['name']} | {r['needs']} | {MARKS[r['status']]} | {r['seconds']} "
                     f"| {summary} |")
    if rep["skipped_checks"]:
        lines += ["", "Skipped: " + ", ".join(
            f"{r['name']} ({r['summary']})" for r in rep["checks"] if r["status"] == "skipped")]
    lines += ["", "## What each check does", ""]
    lines += [f"- **{r['name']}**: {r['title']}" for r in rep["checks"]]
    lines += ["", "## Tolerances (logits vs CPU fp32: max |diff| / max |ref|, label agreement)",
              "", "| precision | max rel | labels agree |", "|---|---:|---:|"]
    for k, t in rep["tolerances"].items():
        lines.append(f"| {k} | {t['max_rel']:g} | {100 * t['agree']:g} % |")
    lines += ["", f"Latency goal: full-size student p99 <= {rep['latency_goal_p99_ms']:g} ms.",
              "", "## Metrics", ""]
    for r in rep["checks"]:
        if r.get("metrics"):
            lines += [f"### {r['name']}", "", "```json", json.dumps(r["metrics"], indent=1),
                      "```", ""]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(prog="tools/gpu_check", description=__doc__.splitlines()[0],
                                 epilog="docs/gpu.md: what each check does, the tolerances and "
                                        "why, running it on a machine without a registry")
    ap.add_argument("--out", default=str(ROOT / "gpu-check-out"), help="report folder")
    ap.add_argument("--quick", action="store_true",
                    help="small sizes; on CPU also skip the two slowest checks (the test)")
    ap.add_argument("--only", metavar="NAMES", help="comma-separated check names")
    ap.add_argument("--list", action="store_true", help="list the checks and exit")
    ap.add_argument("--budget-s", type=float, default=470.0,
                    help="skip the checks that would start after this many seconds")
    ap.add_argument("--no-cuda", action="store_true", help="run as if there were no GPU")
    ap.add_argument("--rehearse", action="store_true",
                    help="without a GPU: run the GPU checks' code on the CPU at toy sizes (finds "
                    "errors in the script before device time is spent; not GPU results)")
    ap.add_argument("--no-install", action="store_true",
                    help="never make .gpu-venv (fail instead when something is missing)")
    args = ap.parse_args(argv)
    if not args.no_install:
        bootstrap(argv)
    else:
        sys.path.insert(0, str(ROOT))
    sys.path.insert(0, str(ROOT / "tools"))
    import gpu_checks as G

    if args.list:
        for c in G.CHECKS:
            print(f"{c.name:16} {c.needs or '-':6} {c.title}")
        return 0
    known = {c.name for c in G.CHECKS}
    if args.only and not set(args.only.split(",")) <= known:
        bad = sorted(set(args.only.split(",")) - known)
        print(f"gpu_check: error: unknown check(s) {', '.join(bad)} (see --list)",
              file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rep = run_checks(args)
    (out / "GPU_CHECK.json").write_text(json.dumps(rep, indent=2) + "\n")
    (out / "GPU_CHECK.md").write_text(markdown(rep))
    print(f"{rep['passed']} passed, {rep['failed']} failed, {rep['skipped']} skipped "
          f"({', '.join(rep['skipped_checks']) or 'none skipped'}) in {rep['seconds']} s; "
          f"report: {out / 'GPU_CHECK.md'}", flush=True)
    return 1 if rep["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
