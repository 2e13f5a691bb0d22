"""Helpers for tests that talk to a running pipeline's tcp endpoints: a free port, and junk.

    port = free_port()
    sender = Junk("tcp://127.0.0.1:%d" % port).start()   # a thread: zmq junk + raw garbage
    ...run the pipeline...
    sender.join()
"""

from __future__ import annotations

import json
import socket
import threading
import time

import zmq


def free_port() -> int:
    """A tcp port nobody listens on now (the OS picks it; a test binds it moments later)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _header(**fields) -> bytes:
    h = {"v": 1, "kind": "window", "stream": "cam0", "seq": 0, "t0_us": 0, "t1_us": 0,
         "buffers": [], "ts": {}, "meta": {}}
    h.update(fields)
    return json.dumps(h).encode()


F4 = {"dtype": "<f4", "shape": [2, 2]}

# multipart messages that break the wire format in each way the issue names
MESSAGES = {
    "garbage frame": [b"\x00\xffjunk"],
    "garbage header": [b"window", b"{not json", b"x" * 16],
    "wrong schema version": [b"window", _header(v=99, buffers=[F4]), bytes(16)],
    "truncated multipart": [b"window", _header(buffers=[F4, F4]), bytes(16)],
    "oversized (declared)": [b"window", _header(buffers=[{"dtype": "<f4",
                                                          "shape": [1 << 20, 1 << 20]}]),
                             bytes(16)],
    "oversized frame for its header": [b"window", _header(buffers=[F4]), bytes(1 << 20)],
    # follows the wire format, but is no window (no tensor, no window end): the receiving
    # stage's own check
    "well-formed, no tensor": [b"window", _header()],
}
OVERSIZED = 1           # of MESSAGES, counted as oversized too
# not zmq: the first byte of a zmq greeting, then a broken signature (zmq resets the connection;
# some other bytes, e.g. an HTTP request, zmq takes for a zmq 1.0 peer and waits for more)
RAW_GARBAGE = b"\xff" + bytes(8) + b"\x00" + b"this is not zmq " * 8


class Junk(threading.Thread):
    """Sends MESSAGES through a zmq PUSH (when `messages`) and RAW_GARBAGE over a plain tcp
    connection to `url`, retrying until the endpoint is bound; `done` is set once both went
    out (the raw connection is held until the peer drops it, i.e. refused it)."""

    def __init__(self, url: str, messages: bool = True, timeout_s: float = 60):
        super().__init__(daemon=True)
        self.url, self.messages, self.timeout_s = url, messages, timeout_s
        self.done = threading.Event()
        self.refused = False

    def start(self):
        super().start()
        return self

    def run(self):
        host, port = self.url[len("tcp://"):].rsplit(":", 1)
        deadline = time.monotonic() + self.timeout_s
        if self.messages:
            push = zmq.Context.instance().socket(zmq.PUSH)
            push.setsockopt(zmq.LINGER, int(self.timeout_s * 1000))
            push.connect(self.url)          # zmq retries until the stage binds
            for frames in MESSAGES.values():
                push.send_multipart(frames)
            push.close()                    # lingers until they are delivered
        while time.monotonic() < deadline:
            try:
                conn = socket.create_connection((host, int(port)), timeout=1)
            except OSError:
                time.sleep(0.05)
                continue
            with conn:
                try:
                    conn.sendall(RAW_GARBAGE)
                    conn.settimeout(10)
                    while conn.recv(4096):      # zmq's greeting, then the close
                        pass
                    self.refused = True
                except OSError:
                    self.refused = True
            break
        self.done.set()
