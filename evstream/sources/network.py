"""dv-processing network streams: `tcp://HOST:PORT` and `unix:///path/to.sock`.

The server is a dv-processing `NetworkWriter` (or DV's network output module); one connection
carries ONE stream: events, frames, IMU or triggers (`isEventStreamAvailable()` etc. say which).

What dv 2.0.4's `NetworkReader` does, and how this source copes (tests/test_network.py shows
each one on real sockets):
- It buffers at most 1000 packets; packets arriving while that buffer is full are dropped
  silently (the newest are lost, nothing is counted). So a dedicated thread drains the reader
  as fast as packets come, into our own bounded queue of dv's objects (conversion to numpy and
  the noise filters run in the consumer's thread, when it takes a packet, so filters attached
  after opening still see every packet). When OUR queue is full the live policy applies: the
  oldest queued packet is dropped and its events counted in `stats.lost`.
  `received_events` / `received_packets` count everything that arrived from dv. (A burst of
  over 1000 packets within a few milliseconds, faster than any camera sends, can still
  overflow dv's buffer before the thread gets to it; nothing can count that loss.)
- When the server goes away, packets that had already reached the reader but were not read
  yet are not returned any more.
  The drain thread keeps dv's buffer near empty, so little is ever left in it.
- Its constructor takes numeric addresses only and blocks, holding the GIL, for as long as the
  OS takes to connect and for the server's stream header to arrive. So before handing over to
  dv we resolve the host name ourselves and probe the address with a plain socket and a timeout
  (`connect_timeout_s`): an unknown host, a refused connection, a timeout or a server that sends
  no header are one-line SourceErrors, never a hang.
- A server that closes mid-stream ends the source cleanly: iteration stops and `end_reason`
  says why (a warning is logged).

The source is live: infinite, not rewindable; bad events are dropped and counted by default.
"""

from __future__ import annotations

import collections
import ipaddress
import logging
import os
import socket
import stat
import threading
import time
from typing import Iterator
from urllib.parse import parse_qsl, urlsplit

from evstream.errors import SourceError
from evstream.sources import register_scheme
from evstream.sources.base import EventSource
from evstream.sources.camera import _one_line, frame_from_dv, imu_from_dv, triggers_from_dv
from evstream.types import Packet

log = logging.getLogger(__name__)

DV_READER_BUFFER_PACKETS = 1000   # dv 2.0.4 NetworkReader's internal queue (measured)


def parse_network_uri(uri: str) -> tuple[str, object, dict]:
    """-> ("tcp", (host, port), options) or ("unix", path, options)."""
    parts = urlsplit(uri)
    options = {k.replace("-", "_"): v for k, v in parse_qsl(parts.query, keep_blank_values=True)}
    if parts.scheme == "unix":
        path = (parts.netloc + parts.path) if parts.netloc else parts.path
        if not path:
            raise SourceError(f"{uri}: no socket path (expected unix:///path/to.sock)")
        return "unix", path, options
    if parts.scheme != "tcp":
        raise SourceError(f"{uri}: not a tcp:// or unix:// address")
    try:
        host, port = parts.hostname, parts.port
    except ValueError as e:
        raise SourceError(f"{uri}: bad port ({e})") from None
    if not host or port is None:
        raise SourceError(f"{uri}: expected tcp://HOST:PORT")
    if port == 0:
        raise SourceError(f"{uri}: port 0 is not a server port")
    return "tcp", (host, port), options


def _resolve(uri: str, host: str, port: int) -> str:
    try:
        ipaddress.ip_address(host)
        return host
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise SourceError(f"{uri}: unknown host {host!r} ({e.strerror})") from None
    infos.sort(key=lambda i: i[0] != socket.AF_INET)   # prefer IPv4, as DV servers do
    return infos[0][4][0]


def _probe(uri: str, family: int, address, timeout_s: float) -> None:
    """Connect with a timeout and wait for the server's first bytes; raise SourceError if not."""
    s = socket.socket(family, socket.SOCK_STREAM)
    s.settimeout(timeout_s)
    try:
        try:
            s.connect(address)
        except socket.timeout:
            raise SourceError(f"{uri}: no answer within {timeout_s:g} s") from None
        except OSError as e:
            raise SourceError(f"{uri}: cannot connect ({e.strerror or e})") from None
        try:
            first = s.recv(1, socket.MSG_PEEK)
        except socket.timeout:
            raise SourceError(f"{uri}: connected, but no dv stream header arrived within "
                              f"{timeout_s:g} s (is it a dv-processing / DV network "
                              f"output?)") from None
        except OSError as e:
            raise SourceError(f"{uri}: connection failed ({e.strerror or e})") from None
        if not first:
            raise SourceError(f"{uri}: the server closed the connection at once "
                              f"(too many clients?)")
    finally:
        s.close()


class NetworkSource(EventSource):
    live = True

    def __init__(self, uri: str, *, width: int | None = None, height: int | None = None,
                 bad_events: str | None = None, filters=None, queue_packets: int = 1000,
                 connect_timeout_s: float = 5.0, idle_s: float = 0.0005):
        import dv_processing as dv

        self.name = uri
        kind, where, query = parse_network_uri(uri)
        unknown = sorted(set(query) - {"queue_packets", "connect_timeout_s"})
        if unknown:
            raise SourceError(f"{uri}: unknown option {unknown[0]!r} "
                              f"(known: queue_packets, connect_timeout_s)")
        try:
            queue_packets = int(query.get("queue_packets", queue_packets))
            connect_timeout_s = float(query.get("connect_timeout_s", connect_timeout_s))
        except ValueError as e:
            raise SourceError(f"{uri}: bad option value ({e})") from None
        if queue_packets < 1 or connect_timeout_s <= 0:
            raise SourceError(f"{uri}: queue_packets must be >= 1, connect_timeout_s > 0")
        if kind == "tcp":
            host, port = where
            ip = _resolve(uri, host, port)
            family = socket.AF_INET6 if ":" in ip else socket.AF_INET
            _probe(uri, family, (ip, port), connect_timeout_s)
            args = (ip, port)
        else:
            try:
                mode = os.stat(where).st_mode
            except OSError as e:
                raise SourceError(f"{uri}: {e.strerror}") from None
            if not stat.S_ISSOCK(mode):
                raise SourceError(f"{uri}: {where} is not a socket")
            _probe(uri, socket.AF_UNIX, where, connect_timeout_s)
            args = (where,)
        try:
            self._reader = dv.io.NetworkReader(*args)
        except Exception as e:  # noqa: BLE001 - dv raises RuntimeError with a boost message
            raise SourceError(f"{uri}: cannot connect ({_one_line(e)})") from None

        r = self._reader
        self.camera = r.getCameraName() or "unknown"
        self.stream_kind = next((k for k in ("Event", "Frame", "Imu", "Trigger")
                                 if getattr(r, f"is{k}StreamAvailable")()), None)
        if self.stream_kind is None:
            self._reader = None
            raise SourceError(f"{uri}: the server's stream is not events, frames, IMU or "
                              f"triggers")
        res = r.getEventResolution() if self.stream_kind == "Event" else \
            r.getFrameResolution() if self.stream_kind == "Frame" else None
        if res is not None:
            self.width, self.height = int(res[0]), int(res[1])
        elif width and height:
            self.width, self.height = int(width), int(height)
            self.resolution_note = "resolution from --width/--height (the stream has none)"
        else:
            self.width, self.height = 0, 0
            self.resolution_note = "no resolution (the stream carries no events)"
        super().__init__(bad_events=bad_events, filters=filters)

        self.queue_packets = queue_packets
        self.idle_s = idle_s
        self.end_reason = ""
        self.received_events = 0
        self.received_packets = 0
        self.dropped_packets = 0         # by our queue (live policy), events in stats.lost
        self._queue: collections.deque = collections.deque()
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._done = False
        self._thread = threading.Thread(target=self._drain, name=f"evstream-net {uri}",
                                        daemon=True)
        self._thread.start()

    # -- drain thread: moves dv's objects into our queue, nothing more ----------------------------
    def _next_item(self):
        r = self._reader
        kind = self.stream_kind
        if kind == "Event":
            item = r.getNextEventBatch()
            if item is not None:
                self.received_events += len(item)
            return item
        if kind == "Frame":
            return r.getNextFrame()
        if kind == "Imu":
            return r.getNextImuBatch()
        return r.getNextTriggerBatch()

    def _put(self, item) -> None:
        with self._cond:
            if len(self._queue) >= self.queue_packets:
                old = self._queue.popleft()
                self.dropped_packets += 1
                if self.stream_kind == "Event":
                    self.stats.lost += len(old)
            self._queue.append(item)
            self._cond.notify()

    def _packet(self, item) -> Packet:
        """dv object -> Packet, in the consumer's thread (so filters set after opening apply
        to every packet, and the drain thread stays as quick as it can be)."""
        kind = self.stream_kind
        if kind == "Event":
            return Packet(events=self.dv_events(item))
        if kind == "Frame":
            return Packet(frames=[frame_from_dv(item)])
        if kind == "Imu":
            return Packet(imu=imu_from_dv(item))
        return Packet(triggers=triggers_from_dv(item))

    def _drain(self) -> None:
        why = ""
        try:
            while not self._stop.is_set():
                running = self._reader.isRunning()
                item = self._next_item()
                if item is not None:
                    self.received_packets += 1
                    self._put(item)
                    continue
                if not running:
                    why = "the server closed the connection"
                    break
                time.sleep(self.idle_s)
        except Exception as e:  # noqa: BLE001 - a failing read ends the stream, in one line
            why = f"connection failed ({_one_line(e)})"
        with self._cond:
            if why and not self._stop.is_set():
                self.end_reason = f"{self.name}: {why}"
            self._done = True
            self._cond.notify_all()

    # -- consumer side ----------------------------------------------------------------------------
    def _read(self) -> Iterator[Packet]:
        while True:
            with self._cond:
                while not self._queue and not self._done:
                    self._cond.wait(0.1)
                if self._queue:
                    item = self._queue.popleft()
                else:
                    break
            yield self._packet(item)
        if self.end_reason:
            log.warning("%s", self.end_reason)

    def close(self) -> None:
        stop = getattr(self, "_stop", None)
        if stop is not None:
            stop.set()
            if self._thread.is_alive() and self._thread is not threading.current_thread():
                self._thread.join(timeout=5)
        # dropping the last reference closes dv's socket (after the drain thread is done with it)
        self._reader = None


def open_network(uri: str, *, width=None, height=None, bad_events=None, filters=None,
                 queue_packets=None, connect_timeout_s=None) -> NetworkSource:
    kw = {k: v for k, v in dict(queue_packets=queue_packets,
                                connect_timeout_s=connect_timeout_s).items() if v is not None}
    return NetworkSource(uri, width=width, height=height, bad_events=bad_events,
                         filters=filters, **kw)


register_scheme("tcp", open_network)
register_scheme("unix", open_network)
