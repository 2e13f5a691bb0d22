"""The source stage's gathering of small packets (stages/source._Batcher) into ring writes."""

from __future__ import annotations

import numpy as np
import pytest

from evstream.errors import BadEventsError
from evstream.sources import open_source
from evstream.sources.base import EventSource
from evstream.stages.source import BATCH_EVENTS, _Batcher, unpaced, write_checked
from evstream.stream.ring import EventRing
from evstream.types import Packet, concat_events

DAVIS = "aedat4/davis346_aestream_davis.aedat4"


class _Packets(EventSource):
    live = False

    def __init__(self, events, sizes, bad_events="error"):
        super().__init__(bad_events=bad_events)
        self.events, self.sizes = events, sizes
        self.name, self.camera, self.width, self.height = "packets", "test", 346, 260
        self.resolution_note = ""

    def _read(self):
        i = 0
        for n in self.sizes:
            yield Packet(events=self.events[i:i + n])
            i += n


def _stream(src):
    """What the stage writes into a lossless ring for src, read back, and the write sizes."""
    sizes = []
    with EventRing.create(1 << 20) as ring:
        reader, writer = ring.reader(), ring.writer("lossless")

        def put(ev):
            sizes.append(len(ev))
            write_checked(writer, src, ev, lambda: False)

        b = _Batcher(put)
        for pkt in src.packets(check=False):
            b.add(pkt.events)
        b.flush()
        writer.close_stream()
        out = []
        while (got := reader.read(timeout=0.1)) is not None:
            out.append(got)
        reader.close()
        writer.close()
    return concat_events(out), sizes


@pytest.fixture
def davis_events(realdata):
    with open_source(str(realdata / DAVIS)) as src:
        return concat_events(list(src))


def test_small_packets_reach_the_ring_together_in_order(davis_events):
    ev = davis_events
    sizes = [1000] * 50 + [20_000] + [7] * 1000 + [1] * 100      # small, one big, tiny
    sizes.append(len(ev) - sum(sizes))
    src = _Packets(ev, sizes)
    assert unpaced(src)
    got, writes = _stream(src)
    assert np.array_equal(got, ev)
    assert len(ev) > 100_000 and sum(writes) == len(ev)
    assert max(writes) <= BATCH_EVENTS and 20_000 in writes       # a big packet goes as it is
    assert len(writes) < len(sizes) / 20                              # gathered


def test_a_bad_event_among_gathered_packets_follows_the_policy(davis_events):
    ev = davis_events[:50_000].copy()
    ev["x"][30_123] = 400                      # outside the 346-wide sensor
    sizes = [500] * 100
    with pytest.raises(BadEventsError, match="outside"):
        _stream(_Packets(ev, sizes))
    got, _ = _stream(_Packets(ev, sizes, bad_events="drop"))
    assert np.array_equal(got, np.delete(ev, 30_123))
