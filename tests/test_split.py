"""A pipeline split over two "hosts" (two evstream processes) joined by tcp, with and without
CURVE; `run --record` while streaming; endpoint option errors."""

from __future__ import annotations

import json
import socket
import subprocess
import sys

import pytest

SYNTH = "synthetic:?seed=3&rate=2e5&duration=0.6&frame_rate=20"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def evstream(*args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "evstream", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


@pytest.mark.parametrize("curve", [False, True], ids=["plain", "curve"])
def test_camera_host_to_consumer_host_over_tcp(tmp_path, curve):
    """Host A runs source+window and connects to host B's windows endpoint; B counts every
    window of the lossless stream and ends on A's end of stream."""
    url = f"tcp://127.0.0.1:{free_port()}"
    keys = ["--curve-keys", str(tmp_path / "keys")] if curve else []
    if curve:   # create the keys once, as a user would before copying them to both hosts
        from evstream.stream.curve import load_or_create_keys
        load_or_create_keys(str(tmp_path / "keys"))
    b = evstream("replay", "--stages", "sink", "--no-model", "--lossless", "--bind",
                 f"windows={url}", "--json", "--status-every", "0", *keys)
    a = evstream("replay", SYNTH, "--speed", "max", "--stages", "source,window", "--no-model",
                 "--lossless", "--connect", f"windows={url}", "--json", "--status-every", "0",
                 *keys)
    out_a, err_a = a.communicate(timeout=120)
    out_b, err_b = b.communicate(timeout=60)
    assert a.returncode == 0, err_a
    assert b.returncode == 0, err_b
    sa, sb = json.loads(out_a), json.loads(out_b)
    windows_sent = sa["stages"]["window"]["counters"]["windows_out"]
    assert sa["events_in"] == 120_000
    assert windows_sent >= 12
    assert sb["windows"] == windows_sent
    assert sb["events_out"] == sa["events_in"]


def test_curve_server_rejects_a_client_with_other_keys(tmp_path):
    """A client that knows the server's public key but holds a key pair not in the key
    directory never gets a message through; the key directory's own client does."""
    import zmq
    import zmq.auth

    from evstream.stream.curve import load_or_create_keys, secure, stop_authenticators

    keys = load_or_create_keys(str(tmp_path / "keys"))
    server_pub, _ = zmq.auth.load_certificate(str(tmp_path / "keys" / "server.key"))
    ctx = zmq.Context.instance()
    url = f"tcp://127.0.0.1:{free_port()}"
    pull = ctx.socket(zmq.PULL)
    pull.linger = 0
    try:
        secure(pull, url, "bind", keys)
        pull.bind(url)
        stranger = ctx.socket(zmq.PUSH)
        stranger.linger = 0
        stranger.curve_publickey, stranger.curve_secretkey = zmq.curve_keypair()
        stranger.curve_serverkey = server_pub
        stranger.connect(url)
        try:                                    # queued locally at most: the handshake fails
            stranger.send(b"intruder", flags=zmq.NOBLOCK)
        except zmq.Again:
            pass
        assert not pull.poll(1000)
        stranger.close()
        friend = ctx.socket(zmq.PUSH)
        friend.linger = 0
        secure(friend, url, "connect", keys)
        friend.connect(url)
        friend.send(b"hello")
        assert pull.poll(5000)
        assert pull.recv() == b"hello"
        friend.close()
    finally:
        pull.close()
        stop_authenticators()


def test_run_records_what_it_streams(tmp_path):
    out = tmp_path / "live.aedat4"
    r = subprocess.run([sys.executable, "-m", "evstream", "run", SYNTH, "--no-model",
                        "--no-viewer", "--record", str(out), "--json", "--status-every", "0"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)
    from evstream.sources import open_source

    with open_source(str(out)) as src:
        n = sum(len(p.events) for p in src.packets())
    assert n == s["events_in"] == 120_000


@pytest.mark.parametrize("flag,value,msg", [
    ("--bind", "windows", "expected NAME=URL"),
    ("--bind", "nowhere=tcp://127.0.0.1:1", "NAME one of"),
    ("--connect", "windows=http://x", "the URL must be tcp://HOST:PORT or ipc://PATH"),
    ("--stages", "source,teleport", "not part of this pipeline"),
])
def test_endpoint_option_errors_are_one_line(flag, value, msg):
    r = subprocess.run([sys.executable, "-m", "evstream", "replay", SYNTH, "--no-model",
                        flag, value], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert msg in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
