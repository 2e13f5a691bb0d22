"""Every zmq socket of every stage, made in one place.

    sock = open_endpoint(endpoints, "windows", "bind", hwm=16, linger=0, stats=stats)
    sock = open_endpoint({"publish": url, "curve": keys}, "publish", "connect", hwm=16,
                         linger=0, subscribe=(b"prediction",))
    check_url("windows", "tcp://gpu:5555", "connect")     # the launcher, before any process

An endpoint has a name, a URL (`endpoints[name]`: ipc in the launcher's private directory
unless `--bind/--connect NAME=URL` moved it) and two ends; the socket type follows from the
name and the end:

    name         bound by (type)                         connected by (type)
    control      the launcher (ROUTER)                   every stage (DEALER)
    windows      the worker, else the consumer (PULL)    the window stage (PUSH)
    predictions  the consumer: viewer or sink (PULL)     the worker (PUSH)
    side         the consumer (PULL)                     the source (PUSH)
    publish      the worker (PUB)                        `evstream view` (SUB)

For every socket the factory sets the high-water mark (receive side for receivers, send side
for senders) and linger, makes it a CURVE server or client on tcp when `endpoints["curve"]`
holds keys (stream/curve.py), and subscribes a SUB to its topics. A socket bound on tcp also
gets MAXMSGSIZE (a frame over MAX_FRAME_BYTES makes zmq drop that peer instead of buffering it;
smaller frames that break the wire format are counted by wire.recv) and, given the stage's
WireStats, a monitor (PeerWatch): a connection that never became a zmq peer (bytes that are not
zmq, a CURVE key that is not ours, a handshake that failed) counts in `rejected_peers` when the
stage calls `poll_monitors()` (with each telemetry snapshot). zmq drops a peer of the wrong
socket type silently after its handshake; that one is not counted. A bind or connect that fails (port taken, no
permission, no such address or directory, a malformed URL) is an EvstreamError naming the
endpoint and the URL: one line and exit 2 from the launcher, never a zmq traceback.

The factory remembers (weakly) what it made: when a stage's launcher dies (stream/lifeline.py)
every open socket gets linger 0 and no send timeout, so the orphan's teardown waits for no one.
"""

from __future__ import annotations

import errno
import os
import re
import socket
import weakref

import zmq

from evstream.errors import EvstreamError
from evstream.stream import lifeline
from evstream.stream.curve import secure

ENDPOINTS = {
    "control": (zmq.ROUTER, zmq.DEALER),
    "windows": (zmq.PULL, zmq.PUSH),
    "predictions": (zmq.PULL, zmq.PUSH),
    "side": (zmq.PULL, zmq.PUSH),
    "publish": (zmq.PUB, zmq.SUB),
}
RECEIVERS = frozenset({zmq.PULL, zmq.SUB, zmq.ROUTER, zmq.DEALER})
# wire.DEFAULT_MAX_BYTES (256 MiB) is what a message may hold; a single frame above four times
# that is never buffered at all
MAX_FRAME_BYTES = 4 * 256 * 1024 * 1024
IPC_PATH_MAX = 107          # sockaddr_un.sun_path on Linux, without the terminating NUL
HANDSHAKE_FAILED = (zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
                    | zmq.EVENT_HANDSHAKE_FAILED_AUTH)
WATCHED_EVENTS = (zmq.EVENT_ACCEPTED | zmq.EVENT_HANDSHAKE_SUCCEEDED | HANDSHAKE_FAILED
                  | zmq.EVENT_DISCONNECTED)

_made: "weakref.WeakSet[zmq.Socket]" = weakref.WeakSet()
_monitors: list = []        # [PeerWatch]
_bound: dict[str, str] = {}  # endpoint name -> the address bound in this process


def open_endpoint(endpoints: dict, name: str, side: str, *, hwm: int | None = None,
                  linger: int = 0, ctx: zmq.Context | None = None, stats=None,
                  subscribe=(), identity: bytes | None = None) -> zmq.Socket:
    """Make, configure and bind (side "bind") or connect ("connect") the socket of endpoint
    `name` at `endpoints[name]` (see the module comment)."""
    if side not in ("bind", "connect"):
        raise ValueError(f"side must be 'bind' or 'connect', not {side!r}")
    url = endpoints[name]
    kind = ENDPOINTS[name][0 if side == "bind" else 1]
    ctx = ctx or zmq.Context.instance()
    sock = ctx.socket(kind)
    try:
        if hwm is not None:
            sock.setsockopt(zmq.RCVHWM if kind in RECEIVERS else zmq.SNDHWM, hwm)
        sock.setsockopt(zmq.LINGER, linger)
        if identity is not None:
            sock.setsockopt(zmq.IDENTITY, identity)
        tcp_bound = side == "bind" and url.startswith("tcp://")
        if tcp_bound and kind in RECEIVERS:
            sock.setsockopt(zmq.MAXMSGSIZE, MAX_FRAME_BYTES)
        secure(sock, url, side, endpoints.get("curve"))
        for topic in subscribe:
            sock.setsockopt(zmq.SUBSCRIBE, topic)
        if tcp_bound and stats is not None:
            _monitors.append(PeerWatch(sock, stats, name))
        try:
            getattr(sock, side)(url)
        except zmq.ZMQError as e:
            raise EvstreamError(_failure(name, url, side, e)) from None
    except BaseException:
        _close_monitor(sock)
        sock.close(0)
        raise
    _made.add(sock)
    if side == "bind" and name != "control":       # the launcher's own
        _bound[name] = bound_url(sock)
    return sock


def consumer_endpoint(endpoints: dict) -> str:
    """The endpoint the consumer (viewer or sink) binds: `predictions`, or `windows` when there
    is no worker (the launcher then gives both names one URL)."""
    if endpoints.get("predictions") and endpoints["predictions"] != endpoints.get("windows"):
        return "predictions"
    return "windows"


def bound_endpoints() -> dict[str, str]:
    """{endpoint name: address} of what this process bound (a stage's `ready` carries it, so
    the launcher can say which port a `tcp://HOST:*` got)."""
    return dict(_bound)


def bound_url(sock: zmq.Socket) -> str:
    """The address a socket actually bound (a tcp port given as * or 0 becomes a number)."""
    return sock.getsockopt_string(zmq.LAST_ENDPOINT)


def close(sock: zmq.Socket | None, linger: int | None = None) -> None:
    """Close a socket made here (and its monitor)."""
    if sock is None or sock.closed:
        return
    _close_monitor(sock)
    sock.close(linger)


def _close_monitor(sock) -> None:
    for watch in [w for w in _monitors if w.sock is sock]:
        _monitors.remove(watch)
        watch.close()


class PeerWatch:
    """Counts the peers of a socket bound to tcp that never became zmq peers: a handshake that
    failed (zmq says so for a bad mechanism, a CURVE key that is not ours, some garbage), or a
    connection that ended before its handshake did (garbage zmq drops without a word). zmq's
    monitor gives an accepted or ended connection's descriptor but not a handshake's, so
    handshakes are matched to the oldest connection still waiting for one (they finish in
    order but for a race; the totals are right once the connections have ended)."""

    def __init__(self, sock: zmq.Socket, stats, name: str):
        self.sock, self.stats, self.name = sock, stats, name
        self.mon = sock.get_monitor_socket(WATCHED_EVENTS)
        self.pending: list[int] = []        # descriptors accepted, handshake not yet done

    def poll(self) -> None:
        from zmq.utils.monitor import recv_monitor_message

        while not self.mon.closed and self.mon.poll(0):
            try:
                event = recv_monitor_message(self.mon, zmq.NOBLOCK)
            except zmq.ZMQError:
                return
            kind, fd = event["event"], event["value"]
            if kind == zmq.EVENT_ACCEPTED:
                self.pending.append(fd)
            elif kind == zmq.EVENT_HANDSHAKE_SUCCEEDED and self.pending:
                self.pending.pop(0)
            elif kind & HANDSHAKE_FAILED:
                if self.pending:
                    self.pending.pop(0)
                self.refused(zmq.Event(kind).name.lower())
            elif kind == zmq.EVENT_DISCONNECTED and fd in self.pending:
                self.pending.remove(fd)
                self.refused("closed before a zmq handshake")

    def refused(self, why: str) -> None:
        self.stats.rejected_peers += 1
        self.stats.last_error = f"{self.name}: refused a tcp peer ({why})"

    def close(self) -> None:
        try:
            self.sock.disable_monitor()
        except zmq.ZMQError:
            pass
        self.mon.close(0)


def poll_monitors() -> None:
    """Count the peers refused since the last call into each bound socket's WireStats."""
    for watch in list(_monitors):
        watch.poll()


def _abandon() -> None:
    """The launcher is gone: nothing queued will be delivered; let every socket go at once."""
    for sock in list(_made):
        if not sock.closed:
            try:
                sock.setsockopt(zmq.LINGER, 0)
                if sock.socket_type not in (zmq.PULL, zmq.SUB):
                    sock.setsockopt(zmq.SNDTIMEO, 0)
            except zmq.ZMQError:
                pass


lifeline.when_orphaned(_abandon)


# -- errors ---------------------------------------------------------------------------------------

_REASONS = {
    errno.EADDRINUSE: "the address is in use (another program listens there)",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.ENODEV: "no such host or network interface here",
    errno.EADDRNOTAVAIL: "this host has no such address",
    errno.ENOENT: "no such directory",
    errno.EINVAL: "not a valid endpoint URL (tcp://HOST:PORT or ipc://PATH)",
    errno.EPROTONOSUPPORT: "unsupported transport (tcp:// or ipc://)",
}


def _failure(name: str, url: str, side: str, e: zmq.ZMQError) -> str:
    reason = _REASONS.get(e.errno, e.strerror)
    if e.errno in (errno.EACCES, errno.EPERM) and url.startswith("tcp://"):
        port = url.rsplit(":", 1)[-1]
        if port.isdigit() and int(port) < 1024:
            reason += f" (port {port} is below 1024: use a higher one)"
    where = "at" if side == "bind" else "to"
    return f"cannot {side} the {name} endpoint {where} {url}: {reason}"


# -- checking a URL before any process starts -----------------------------------------------------

_TCP_RE = re.compile(r"^tcp://(\[[0-9A-Fa-f:.]+\]|[^\s:/\[\]]+):([^:/\s]+)$")


def check_url(name: str, url: str, side: str, label: str | None = None) -> str:
    """Validate an endpoint URL for binding ("bind") or connecting ("connect") -> the URL, or
    an EvstreamError `LABEL: why` (LABEL defaults to `--SIDE NAME=URL`): the scheme, the
    host:port syntax, the port range (bind also takes * or 0: a free port), the host (resolved;
    for bind also * or a network interface), an ipc path's length and directory."""
    label = label or f"--{side} {name}={url}"
    if url.startswith("ipc://"):
        path = url[len("ipc://"):]
        if not path:
            raise EvstreamError(f"{label}: an ipc endpoint needs a path, ipc://PATH")
        if not path.startswith("@"):        # "@name": Linux's abstract namespace
            if len(os.path.abspath(path).encode()) > IPC_PATH_MAX:
                raise EvstreamError(f"{label}: the ipc path is longer than the Linux limit of "
                                    f"{IPC_PATH_MAX} bytes")
            folder = os.path.dirname(os.path.abspath(path))
            if side == "bind" and not os.path.isdir(folder):
                raise EvstreamError(f"{label}: no such directory {folder}")
        return url
    if not url.startswith("tcp://"):
        raise EvstreamError(f"{label}: the URL must be tcp://HOST:PORT or ipc://PATH")
    m = _TCP_RE.match(url)
    if not m:
        raise EvstreamError(f"{label}: not a tcp://HOST:PORT URL")
    host, port = m.group(1), m.group(2)
    wildcard_port = side == "bind" and port in ("*", "0")
    if not wildcard_port and not (port.isdigit() and 0 < int(port) < 65536):
        raise EvstreamError(f"{label}: port must be 1..65535"
                            + (" (or * for a free one)" if side == "bind" else "")
                            + f", not {port!r}")
    bare = host.strip("[]")
    if side == "bind" and (host == "*" or bare in {n for _, n in _interfaces()}):
        return url
    try:
        socket.getaddrinfo(bare, None)
    except (socket.gaierror, UnicodeError):
        raise EvstreamError(f"{label}: unknown host {bare!r}"
                            + (" (bind takes an address or interface of this host, or *)"
                               if side == "bind" else "")) from None
    return url


def _interfaces():
    try:
        return socket.if_nameindex()
    except OSError:
        return []
