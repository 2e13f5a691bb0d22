"""Where the window stage's tensors live until the consumer has them; the same four calls for
both transports:

    buf = out.acquire(wait=True)     a (C, H, W) float32 buffer to compute into (None: a stop
                                     came while waiting, or wait=False and none is free)
    out.send(sock, header, buf, flags)   hand it on (zmq.Again: not sent, the buffer is back)
    out.give_back(buf)               not sent after all (a window built ahead and not used)
    out.idle()                       has zmq finished with the last window?

`SlotOut`: every stage on this host. Tensors are computed straight into shared-memory window
slots (stream/slots.py) and only the header goes over zmq; a lossless acquire waits for the
consumer to release a slot, in slices, watching for a stop request.
`BufferPool`: otherwise. Tensors are sent as zero-copy zmq buffers, each reused once zmq reports
it sent (MessageTracker). Either way the hot path allocates nothing per window.
"""

from __future__ import annotations

import numpy as np
import zmq


class BufferPool:
    """zmq transport: tensors sent as zero-copy buffers, each reused once zmq reports it sent
    (MessageTracker), so the hot path allocates nothing per window."""

    def __init__(self, shape, size: int = 6):
        self.shape = shape
        self.free = [np.zeros(shape, np.float32) for _ in range(size)]
        self.busy: list[tuple[np.ndarray, zmq.MessageTracker]] = []
        self.allocated = 0
        self.in_flight = None           # the tracker of the last window sent

    def acquire(self, wait: bool = True) -> np.ndarray:
        still = []
        for buf, tracker in self.busy:
            if tracker.done:
                self.free.append(buf)
            else:
                still.append((buf, tracker))
        self.busy = still
        if self.free:
            return self.free.pop()
        self.allocated += 1
        return np.zeros(self.shape, np.float32)

    def give_back(self, buf: np.ndarray) -> None:
        self.free.append(buf)

    def send(self, sock, header: dict, buf: np.ndarray, flags: int) -> None:
        from evstream.stream import wire

        try:
            tracker = wire.send(sock, b"window", header, [buf], flags=flags, track=True)
        except zmq.Again:
            self.free.append(buf)
            raise
        self.busy.append((buf, tracker))
        self.in_flight = tracker

    def idle(self) -> bool:
        """Has zmq finished with the last window (its I/O threads get the CPU first)?"""
        return self.in_flight is None or self.in_flight.done


class SlotOut:
    """Shared-memory transport (stream/slots.py): tensors are computed straight into window
    slots and only the header goes over zmq. A lossless acquire waits for the consumer, in
    slices, watching for a stop request (None then)."""

    def __init__(self, writer, shape, should_stop):
        self.writer = writer
        self.shape = shape
        self.should_stop = should_stop
        self.slot_of: dict[int, tuple[int, np.ndarray]] = {}

    def acquire(self, wait: bool = True) -> np.ndarray | None:
        while True:
            i = self.writer.acquire(timeout=0.05 if wait else 0.0)
            if i is not None:
                buf = self.writer.array(i, self.shape)
                self.slot_of[id(buf)] = (i, buf)
                return buf
            if not wait or self.should_stop():
                return None

    def give_back(self, buf: np.ndarray) -> None:
        i, _ = self.slot_of.pop(id(buf))
        self.writer.discard(i)

    def send(self, sock, header: dict, buf: np.ndarray, flags: int) -> None:
        from evstream.stream import wire

        i, _ = self.slot_of[id(buf)]
        ref = self.writer.publish(i)
        try:
            wire.send(sock, b"window", header, [buf], flags=flags, slot=ref)
        except zmq.Again:
            self.writer.discard(i)
            raise
        finally:
            self.slot_of.pop(id(buf), None)

    def idle(self) -> bool:
        return True
