"""CURVE encryption and authentication for tcp endpoints (`--curve-keys DIR`).

    keys = load_or_create_keys("keys/")          # plain dict of paths: crosses `spawn`
    secure(sock, url, "bind", keys)               # before sock.bind(url) / sock.connect(url)

stream/sockets.py calls `secure` for every socket it makes (every stage's, and `evstream view`'s
with `--curve-keys`), with the keys the launcher put in `endpoints["curve"]`.

ipc endpoints never leave the host and are left as they are. On tcp the binding side is the CURVE
server (it holds `server.key_secret`), the connecting side a client that knows the server's public
key and proves its own (`client.key_secret`); the server accepts only client keys found in DIR
(a ZAP authenticator thread per process, started on first use). DIR is created with both key
pairs on first use; copy the same DIR to every host of a split pipeline (and keep it private: it
holds secret keys). Without `--curve-keys`, tcp is plain: bind loopback only, or a trusted
network.
"""

from __future__ import annotations

import os
from pathlib import Path

import zmq
import zmq.auth

from evstream.errors import EvstreamError

_AUTH = {}          # per process: the running authenticator


def load_or_create_keys(directory: str) -> dict:
    d = Path(directory)
    if not zmq.has("curve"):
        raise EvstreamError("--curve-keys: this libzmq was built without CURVE support")
    try:
        d.mkdir(parents=True, exist_ok=True)

        for name in ("server", "client"):
            if not (d / f"{name}.key_secret").exists():
                zmq.auth.create_certificates(str(d), name)
                os.chmod(d / f"{name}.key_secret", 0o600)
        zmq.auth.load_certificate(str(d / "server.key_secret"))
        zmq.auth.load_certificate(str(d / "client.key_secret"))
    except (OSError, ValueError) as e:
        raise EvstreamError(f"{directory}: cannot create or read CURVE keys ({e})") from None
    return {"dir": str(d)}


def secure(sock: zmq.Socket, url: str, role: str, keys: dict | None) -> None:
    """Make `sock` a CURVE server (role "bind") or client ("connect") when `url` is tcp and
    keys were given; otherwise leave it alone."""
    if not keys or not url.startswith("tcp://"):
        return
    d = Path(keys["dir"])
    server_pub, server_sec = zmq.auth.load_certificate(str(d / "server.key_secret"))
    if role == "bind":
        _authenticator(str(d))
        sock.curve_secretkey = server_sec
        sock.curve_publickey = server_pub
        sock.curve_server = True
    else:
        client_pub, client_sec = zmq.auth.load_certificate(str(d / "client.key_secret"))
        sock.curve_secretkey = client_sec
        sock.curve_publickey = client_pub
        sock.curve_serverkey = server_pub


def _authenticator(directory: str) -> None:
    if directory in _AUTH:
        return
    from zmq.auth.thread import ThreadAuthenticator

    auth = ThreadAuthenticator(zmq.Context.instance())
    auth.start()
    # only the client key in DIR may connect (the .key files hold public keys only)
    public = Path(directory) / "public"
    public.mkdir(exist_ok=True)
    src = Path(directory) / "client.key"
    (public / "client.key").write_bytes(src.read_bytes())
    auth.configure_curve(domain="*", location=str(public))
    _AUTH[directory] = auth


def stop_authenticators() -> None:
    for auth in _AUTH.values():
        auth.stop()
    _AUTH.clear()
