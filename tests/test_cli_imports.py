"""The command line starts light: `evstream --help` imports none of the commands' modules, and
a command imports only its own, so no command pays for another's imports (torch for export,
Numba for the readers, ...). The pipeline's launcher loads no Numba and no torch either: its
stages load what they need, each in its own process."""

from __future__ import annotations

import subprocess
import sys

import pytest

from evstream.cli import COMMANDS, _load

HEAVY = ("numpy", "numba", "torch", "zmq", "dv_processing", "cv2", "onnx", "onnxruntime",
         "rosbags", "h5py")


def _loaded_after(code: str) -> list[str]:
    code += f"\nimport sys\nprint(' '.join(m for m in {HEAVY!r} if m in sys.modules))\n"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return r.stdout.split()


def test_top_level_help_loads_no_heavy_module():
    assert _loaded_after("from evstream.cli import build_parser\n"
                         "build_parser(['--help'])") == []


@pytest.mark.parametrize("name, allowed", [("replay", {"numpy"}), ("run", {"numpy"}),
                                           ("train", set()), ("view", set())])
def test_a_command_loads_only_what_it_needs(name, allowed):
    assert set(_loaded_after(f"from evstream.cli import build_parser\n"
                             f"build_parser([{name!r}, '--help'])")) <= allowed


def test_the_table_says_what_each_command_says():
    """`evstream --help` shows the table's line without importing the modules: it must be the
    module's own HELP."""
    assert {n: h for n, (h, _) in COMMANDS.items()} == {n: _load(n).HELP for n in COMMANDS}


def test_a_replay_launcher_loads_neither_numba_nor_torch(tmp_path):
    """Up to the moment it starts the stages, `evstream replay FILE` (the pipeline's launcher:
    ring, endpoints, checks) imports no Numba and no torch."""
    code = ("import sys\n"
            "import evstream.pipeline as P\n"
            "def stop(*a, **k):\n"
            "    loaded = [m for m in ('numba', 'torch') if m in sys.modules]\n"
            "    print('LOADED', *loaded)\n"
            "    raise SystemExit(0)\n"
            "P.run_pipeline = stop\n"
            "from evstream.cli import main\n"
            "main(['replay', 'synthetic:?seed=1&rate=1e5&duration=0.2', '--no-model'])\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert [line for line in r.stdout.splitlines() if line.startswith("LOADED")] == ["LOADED"]


def test_the_built_in_representations_are_the_registered_ones():
    """registry.BUILT_IN names each built-in representation and its module, so a name is
    checked without loading the kernels; importing every module registers exactly those."""
    code = ("from evstream.represent import registry\n"
            "import evstream.represent.evdistill, evstream.represent.histogram\n"
            "import evstream.represent.timesurface, evstream.represent.voxel\n"
            "print(sorted(registry._REGISTRY) == sorted(registry.BUILT_IN))\n"
            "print(all(type(registry._REGISTRY[n]).__module__ == 'evstream.represent.' + m\n"
            "          for n, m in registry.BUILT_IN.items()))\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.stdout.split() == ["True", "True"], r.stderr
