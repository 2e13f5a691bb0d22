"""Checking an AEDAT 4.0 file before dv-processing 2.0.4 reads it.

dv-processing 2.0.4 does not fail cleanly on every damaged file: on an LZ4 payload it cannot
decompress (a flipped bit in the middle of a recording) it spins forever holding the GIL, and on
a packet whose flatbuffer offsets point outside the packet it segfaults. Neither can be caught
from Python, so recording.py lets dv read a packet only after this module has passed it. This is
the one workaround for both bugs; tests/test_aedat4.py shows the hang and the crash in a child
process.

Contract:
- `read_layout(path) -> Layout` parses the file header, the stream list (XML) and the
  FileDataTable (where every packet is; LZ4-decompressed here), or, for a recording that was
  never closed (no table: killed while recording), walks the 8-byte packet headers the way dv
  does and keeps the complete packets (`tail_bytes`: what is left after them, e.g. a packet cut
  short). A ZSTD-compressed table is not read (no decoder here): the packet list
  stays empty. Anything broken is a one-line SourceError naming the file and the byte offset,
  and `evstream repair` where it recovers the intact packets (`repair_hint`; a finished file
  cut short, a damaged packet or table). `read_header(path)` is the header and stream list
  alone (what aedat4_repair starts from). The file is only read, never changed.
- `PacketChecker(path, layout, background)` runs one numba pass over the packets in file order
  (`_check_packets`, GIL released): each packet's LZ4 frame is walked by lz4_check (frame
  header and its checksum, block sizes, every sequence's literal and match lengths and match
  offsets, the end-of-block rules) without decoding event packets except their first
  EVENT_HEAD_BYTES; the
  small frame/IMU/trigger packets are decoded whole. The decoded bytes' flatbuffer offsets and
  vector lengths are checked against the packet size (frame pixels against
  sizeX*sizeY*channels). With `background=True` the pass runs in a daemon thread ahead of dv's
  decoding, so on two cores it costs almost nothing in wall time.
- `wait(k)` returns once packet k (file order) has passed and raises a one-line SourceError
  ("corrupt packet K (stream) at byte B: what") once any packet up to k has failed; it never
  hangs, since the pass always ends. `wait_all()` waits for every packet; `close()` stops the
  thread and is safe to call twice.
- ZSTD-compressed files and files without packets pass unchecked (dv reads them as they are).
"""

from __future__ import annotations

import os
import struct
import threading
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field

import numba
import numpy as np

from evstream.errors import SourceError
from evstream.sources.lz4_check import LZ4_ERRORS, _lz4_frame, _lz4_walk

MAGIC = b"#!AER-DAT4.0\r\n"
COMPRESSION = {0: "NONE", 1: "LZ4", 2: "LZ4_HIGH", 3: "ZSTD", 4: "ZSTD_HIGH"}
KINDS = {"EVTS": 1, "FRME": 2, "IMUS": 3, "TRIG": 4}          # packet types we check in depth
EVENT_HEAD_BYTES = 4096          # how much of an event packet is decoded to check its offsets


# -- the file's layout (header, streams, packet table) -------------------------------------------

@dataclass
class StreamInfo:
    id: int
    name: str            # dv's stream name ("events", "frames", "imu", "triggers")
    type: str            # typeIdentifier: EVTS, FRME, IMUS, TRIG, ...
    source: str          # camera name
    size: tuple[int, int] | None = None


@dataclass
class Layout:
    compression: int
    table_pos: int                      # FileDataTable position, -1 when the file has none
    data_start: int
    file_size: int
    streams: dict[int, StreamInfo]
    info_xml: str = ""                  # the stream list as the header holds it
    tail_bytes: int = 0                 # no table: bytes after the last complete packet
    # packets in file order: payload offset, payload size, stream id
    offsets: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    sizes: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    stream_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))

    def cameras(self) -> list[str]:
        return sorted({s.source for s in self.streams.values() if s.type in KINDS and s.source})


class _Buf:
    """Bounds-checked little-endian reads from bytes; a bad offset raises ValueError."""

    def __init__(self, data: bytes):
        self.data = data

    def get(self, fmt: str, pos: int):
        if pos < 0 or pos + struct.calcsize(fmt) > len(self.data):
            raise ValueError(f"offset {pos} outside the {len(self.data)}-byte buffer")
        return struct.unpack_from("<" + fmt, self.data, pos)[0]

    def table(self, pos: int) -> tuple[int, list[int]]:
        """-> (table position, field offsets) of the flatbuffer table at pos."""
        vt = pos - self.get("i", pos)
        vsize, tsize = self.get("H", vt), self.get("H", vt + 2)
        if vsize < 4 or pos + tsize > len(self.data):
            raise ValueError(f"table at {pos} has a bad vtable")
        return pos, [self.get("H", vt + 4 + 2 * i) for i in range((vsize - 4) // 2)]

    def field(self, tbl, i: int, fmt: str, default):
        pos, offs = tbl
        return self.get(fmt, pos + offs[i]) if i < len(offs) and offs[i] else default

    def ref(self, tbl, i: int) -> int | None:
        pos, offs = tbl
        if i >= len(offs) or not offs[i]:
            return None
        p = pos + offs[i]
        return p + self.get("I", p)


def repair_hint(path: str, what: str) -> str:
    """The end of a one-line error about a damaged file: the command that recovers from it."""
    return f"; `evstream repair {path} OUT.aedat4` {what}"


def read_layout(path: str) -> Layout:
    """Parse the header, the stream list and the packet table; SourceError if they are broken
    (naming `evstream repair` where it helps)."""
    lay = read_header(path)
    size, table_pos = lay.file_size, lay.table_pos
    if table_pos >= 0 and not lay.data_start <= table_pos < size:
        if table_pos >= size:
            with open(path, "rb") as f:
                _packets_from_headers(f, lay)
            n = len(lay.offsets)
            end = int(lay.offsets[-1] + lay.sizes[-1]) if n else lay.data_start
            where = f"inside packet {n} (it starts at byte {end})" if end < size else \
                "after a complete packet"
            raise SourceError(f"{path}: truncated: the file ends at byte {size}, {where}, "
                              f"and its packet table (at byte {table_pos}) is gone"
                              + repair_hint(path, f"recovers the {n} complete packets "
                                                  f"before the cut"))
        raise SourceError(f"{path}: corrupt file header: the packet table should be at byte "
                          f"{table_pos}, before the first packet (byte {lay.data_start})"
                          + repair_hint(path, "recovers the packets"))
    with open(path, "rb") as f:
        if table_pos >= 0:
            _packets_from_table(path, f, lay)
        else:
            _packets_from_headers(f, lay)
    return lay


def read_header(path: str) -> Layout:
    """The file header and stream list only (no packets; the table position as it says);
    SourceError if they are broken."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(18)
        if len(head) < 14 or head[:14] != MAGIC:
            raise SourceError(f"{path}: not an AEDAT 4.0 file (it does not start with "
                              f"'#!AER-DAT4.0')")
        if len(head) < 18:
            raise SourceError(f"{path}: truncated inside the file header (byte {len(head)})")
        (hsize,) = struct.unpack_from("<i", head, 14)
        if hsize <= 0 or 18 + hsize > size:
            raise SourceError(f"{path}: truncated or corrupt file header (header size {hsize} "
                              f"at byte 14, file has {size} bytes)")
        b = _Buf(f.read(hsize))
    try:
        root = b.table(b.get("I", 0))
        compression = b.field(root, 0, "i", 0)
        table_pos = b.field(root, 1, "q", -1)
        info = b.ref(root, 2)
        xml = b.data[info + 4: info + 4 + b.get("I", info)].decode() if info else ""
    except (ValueError, UnicodeDecodeError) as e:
        raise SourceError(f"{path}: corrupt file header ({e})") from None
    if compression not in COMPRESSION:
        raise SourceError(f"{path}: corrupt file header (unknown compression {compression})")
    return Layout(compression, table_pos, 18 + hsize, size, _streams(path, xml), xml)


def _streams(path: str, xml: str) -> dict[int, StreamInfo]:
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as e:
        raise SourceError(f"{path}: corrupt stream list in the file header ({e})") from None
    out = {}
    # stream nodes are the numbered children of the "outInfo" node (its path varies by writer)
    nodes = [n for info in root.iter("node") if info.get("name") == "outInfo"
             for n in info.findall("node")]
    for node in nodes:
        if not node.get("name", "").isdigit():
            continue
        attrs = {a.get("key"): (a.text or "") for a in node.findall("attr")}
        info = {}
        for child in node.findall("node"):
            if child.get("name") == "info":
                info = {a.get("key"): (a.text or "") for a in child.findall("attr")}
        sid = int(node.get("name"))
        size = None
        if info.get("sizeX", "").isdigit() and info.get("sizeY", "").isdigit():
            size = (int(info["sizeX"]), int(info["sizeY"]))
        out[sid] = StreamInfo(sid, attrs.get("originalOutputName", ""),
                              attrs.get("typeIdentifier", ""), info.get("source", ""), size)
    return out


def _packets_from_table(path: str, f, lay: Layout) -> None:
    f.seek(lay.table_pos)
    raw = f.read()
    where = f"the packet table at byte {lay.table_pos}"
    if lay.compression in (1, 2):
        src = np.frombuffer(raw, np.uint8)
        n = _lz4_frame(src, 0, len(src), np.zeros(0, np.uint8))
        if n < 0:
            raise SourceError(f"{path}: truncated or corrupt: {where} does not decompress "
                              f"({LZ4_ERRORS.get(n, n)})"
                              + repair_hint(path, "rebuilds it from the packets"))
        out = np.zeros(n, np.uint8)
        _lz4_frame(src, 0, len(src), out)
        raw = out.tobytes()
    elif lay.compression != 0:
        return  # ZSTD: no decoder here; dv reads the table and the packets unchecked
    try:
        rows = _table_rows(np.frombuffer(raw, np.uint8))
    except _TableError as e:
        raise SourceError(f"{path}: truncated or corrupt: {where} is damaged "
                          f"({_TABLE_ERRORS[e.args[0]]})"
                          + repair_hint(path, "rebuilds it from the packets")) from None
    arr = rows[np.lexsort((rows[:, 2], rows[:, 1], rows[:, 0]))]     # by offset (as tuples)
    offset, psize = arr[:, 0], arr[:, 1]
    prev_end = np.concatenate(([lay.data_start], (offset + psize)[:-1]))
    bad = np.flatnonzero((offset - 8 < prev_end) | (psize < 0) | (offset + psize > lay.table_pos))
    if len(bad):
        k = int(bad[0])
        raise SourceError(f"{path}: corrupt: {where} places packet {k} at bytes "
                          f"{int(offset[k])}..{int(offset[k] + psize[k])}, outside the data"
                          + repair_hint(path, "rebuilds it from the packets"))
    lay.offsets, lay.sizes, lay.stream_ids = arr[:, 0].copy(), arr[:, 1].copy(), arr[:, 2].copy()


_TABLE_ERRORS = {-1: "size prefix does not match", -2: "a table lies outside the table's bytes",
                 -3: "a field lies outside the table's bytes"}


class _TableError(Exception):
    pass


def _gather(b: np.ndarray, pos: np.ndarray, nbytes: int, signed: bool = False) -> np.ndarray:
    """Little-endian integers of nbytes at every position in pos (int64), bounds-checked."""
    if len(pos) and (int(pos.min()) < 0 or int(pos.max()) + nbytes > len(b)):
        raise _TableError(-3)
    out = np.zeros(len(pos), np.uint64)
    for k in range(nbytes):
        out |= b[pos + k].astype(np.uint64) << np.uint64(8 * k)
    if signed:
        return out.astype(np.int64) if nbytes == 8 else \
            (out.astype(np.int64) ^ (1 << (8 * nbytes - 1))) - (1 << (8 * nbytes - 1))
    return out.astype(np.int64)


def _tables(b: np.ndarray, pos: np.ndarray):
    """(vtable positions, vtable sizes) of the flatbuffer tables at pos (the checks of
    _Buf.table, for all of them at once)."""
    vt = pos - _gather(b, pos, 4, signed=True)
    if len(vt) and (int(vt.min()) < 0 or int(vt.max()) + 4 > len(b)):
        raise _TableError(-2)
    vsize, tsize = _gather(b, vt, 2), _gather(b, vt + 2, 2)
    if np.any((vsize < 4) | (pos + tsize > len(b)) | (vt + vsize > len(b))):
        raise _TableError(-2)
    return vt, vsize


def _field_offsets(b, vt, vsize, i: int) -> np.ndarray:
    """Offset of field i in each table (0: absent)."""
    has = 4 + 2 * i + 2 <= vsize
    out = np.zeros(len(vt), np.int64)
    out[has] = _gather(b, vt[has] + 4 + 2 * i, 2)
    return out


def _table_rows(b: np.ndarray) -> np.ndarray:
    """FileDataTable flatbuffer (size-prefixed) -> rows (packet offset, size, stream id) in
    table order, with numpy gathers over all entries (a 10,000-packet table in about a
    millisecond, where a Python walk took 0.1-0.2 s); _TableError(code) when damaged."""
    n = len(b)
    if n < 8 or int(_gather(b, np.array([0]), 4)[0]) != n - 4:
        raise _TableError(-1)
    root = np.array([4 + int(_gather(b, np.array([4]), 4)[0])])
    vt, vsize = _tables(b, root)
    f = int(_field_offsets(b, vt, vsize, 0)[0])
    if f == 0:
        return np.zeros((0, 3), np.int64)
    vec = int(root[0]) + f
    vec += int(_gather(b, np.array([vec]), 4)[0])
    count = int(_gather(b, np.array([vec]), 4)[0])
    if vec + 4 + 4 * count > n:
        raise _TableError(-3)
    slots = vec + 4 + 4 * np.arange(count, dtype=np.int64)
    t = slots + _gather(b, slots, 4)
    tvt, tvsize = _tables(b, t)
    rows = np.zeros((count, 3), np.int64)
    fo = _field_offsets(b, tvt, tvsize, 0)
    has = fo != 0
    rows[has, 0] = _gather(b, t[has] + fo[has], 8, signed=True)
    fi = _field_offsets(b, tvt, tvsize, 1)
    has = fi != 0
    rows[has, 2] = _gather(b, t[has] + fi[has], 4, signed=True)
    rows[has, 1] = _gather(b, t[has] + fi[has] + 4, 4, signed=True)
    return rows


def _packets_from_headers(f, lay: Layout) -> None:
    """No packet table (never closed): walk the 8-byte headers, keeping complete packets (the
    walk stops at the first header that is cut short or cannot be one: `tail_bytes`)."""
    rows = []
    pos = lay.data_start
    while pos + 8 <= lay.file_size:
        f.seek(pos)
        sid, psize = struct.unpack("<ii", f.read(8))
        if psize < 0 or pos + 8 + psize > lay.file_size:
            break
        rows.append((pos + 8, psize, sid))
        pos += 8 + psize
    lay.tail_bytes = lay.file_size - pos
    arr = np.array(rows, dtype=np.int64).reshape(-1, 3)
    lay.offsets, lay.sizes, lay.stream_ids = arr[:, 0].copy(), arr[:, 1].copy(), arr[:, 2].copy()


# -- the packet check (numba; releases the GIL) ---------------------------------------------------

_FB_ERROR = -100     # the decompressed packet's flatbuffer points outside the packet
# file identifiers of the KINDS as little-endian u32 (index = kind)
_IDENTS = np.array([0] + [int.from_bytes(k.encode(), "little") for k in KINDS], np.int64)


@numba.njit(cache=True, inline="always")
def _u32(b, p):
    return np.int64(b[p]) | (np.int64(b[p + 1]) << 8) | (np.int64(b[p + 2]) << 16) \
        | (np.int64(b[p + 3]) << 24)


@numba.njit(cache=True, inline="always")
def _u16(b, p):
    return np.int64(b[p]) | (np.int64(b[p + 1]) << 8)


@numba.njit(cache=True, nogil=True)
def _fb_table(b, n, tbl, sizes):
    """Table size of the flatbuffer table at tbl, -1 if it or a field (sizes[i] bytes each,
    for the first len(sizes) fields) leaves b[:n]."""
    if tbl < 0 or tbl + 4 > n:
        return -1
    soff = _u32(b, tbl)
    if soff >= 2 ** 31:
        soff -= 2 ** 32
    vt = tbl - soff
    if vt < 0 or vt + 4 > n:
        return -1
    vsize = _u16(b, vt)
    tsize = _u16(b, vt + 2)
    if vsize < 4 or (vsize & 1) or vt + vsize > n or tsize < 4 or tbl + tsize > n:
        return -1
    for i in range((vsize - 4) // 2):
        fo = _u16(b, vt + 4 + 2 * i)
        width = sizes[i] if i < sizes.shape[0] else 1
        if fo != 0 and (fo < 4 or fo + width > tsize):
            return -1
    return tsize


@numba.njit(cache=True, inline="always")
def _fb_field(b, tbl, i):
    vt_soff = _u32(b, tbl)
    if vt_soff >= 2 ** 31:
        vt_soff -= 2 ** 32
    vt = tbl - vt_soff
    if 4 + 2 * i >= _u16(b, vt):
        return np.int64(0)
    return _u16(b, vt + 4 + 2 * i)


@numba.njit(cache=True, nogil=True)
def _fb_check(b, n, total, kind):
    """Check the flatbuffer in b[:n] (the first n bytes of a `total`-byte packet): size prefix,
    root table, and for known kinds the element vector against the packet size. 0 if sound."""
    if total < 12 or n < 12 or _u32(b, 0) != total - 4:
        return _FB_ERROR
    if kind > 0 and _u32(b, 8) != _IDENTS[kind]:
        return _FB_ERROR            # dv would quote the garbled type name in a bad-UTF-8 error
    root = 4 + _u32(b, 4)
    ptr4 = np.array([4], np.int64)
    if _fb_table(b, n, root, ptr4) < 0:
        return _FB_ERROR
    if kind == 1 or kind == 3 or kind == 4:        # EVTS / IMUS / TRIG: elements vector
        fo = _fb_field(b, root, 0)
        if fo == 0:
            return 0
        vec = root + fo + _u32(b, root + fo)
        if vec + 4 > n:
            return _FB_ERROR
        count = _u32(b, vec)
        if kind == 1:
            return 0 if vec + 4 + 16 * count <= total else _FB_ERROR
        if vec + 4 + 4 * count > n:
            return _FB_ERROR
        if kind == 3:
            sizes = np.array([8, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4], np.int64)
        else:
            sizes = np.array([8, 1], np.int64)
        for i in range(count):
            slot = vec + 4 + 4 * i
            if _fb_table(b, n, slot + _u32(b, slot), sizes) < 0:
                return _FB_ERROR
        return 0
    if kind == 2:                                   # FRME: pixels vs sizeX * sizeY * channels
        sizes = np.array([8, 8, 8, 8, 8, 1, 2, 2, 2, 2, 4, 8, 1], np.int64)
        if _fb_table(b, n, root, sizes) < 0:
            return _FB_ERROR
        fmt = np.int64(0)
        fo = _fb_field(b, root, 5)
        if fo:
            fmt = np.int64(b[root + fo])
        sx = np.int64(0)
        sy = np.int64(0)
        fo = _fb_field(b, root, 6)
        if fo:
            sx = _u16(b, root + fo)
        fo = _fb_field(b, root, 7)
        if fo:
            sy = _u16(b, root + fo)
        if sx >= 32768 or sy >= 32768:
            return _FB_ERROR
        depth = fmt & 7
        elem = 1 if depth <= 1 else (2 if depth <= 3 or depth == 7 else (4 if depth <= 5 else 8))
        need = sx * sy * elem * (((fmt >> 3) & 511) + 1)
        fo = _fb_field(b, root, 10)
        if fo == 0:
            return 0 if need == 0 else _FB_ERROR
        vec = root + fo + _u32(b, root + fo)
        if vec + 4 > n:
            return _FB_ERROR
        count = _u32(b, vec)
        return 0 if count == need and vec + 4 + count <= n else _FB_ERROR
    return 0


@numba.njit(cache=True, nogil=True)
def _check_packets(src, offsets, sizes, kinds, compressed, progress, stop):
    """Check packets in order; progress[0] = packets passed so far, progress[1] = the failing
    packet index (-1 while none), progress[2] = its error code."""
    head = np.zeros(EVENT_HEAD_BYTES, np.uint8)
    for k in range(offsets.shape[0]):
        if stop[0]:
            return
        p = offsets[k]
        end = p + sizes[k]
        kind = kinds[k]
        if compressed:
            if kind == 0 or kind == 1:
                total = _lz4_walk(src, p, end)
            else:
                total = _lz4_frame(src, p, end, head)
            if total >= 0 and kind != 0:
                if kind == 1:
                    _lz4_frame(src, p, end, head, True)
                    code = _fb_check(head, min(total, EVENT_HEAD_BYTES), total, kind)
                else:
                    full = np.zeros(total, np.uint8)
                    _lz4_frame(src, p, end, full)
                    code = _fb_check(full, total, total, kind)
                total = code if code < 0 else total
        else:
            total = _fb_check(src[p:end], sizes[k], sizes[k], kind) if kind != 0 else 0
        if total < 0:
            progress[1] = k
            progress[2] = total
            return
        progress[0] = k + 1


class PacketChecker:
    """Runs _check_packets over a file (in a thread for big files) and answers "may dv read
    packet k yet?" with wait(k): returns once packet k passed, raises SourceError if it failed."""

    def __init__(self, path: str, lay: Layout, background: bool):
        self.path = path
        self.lay = lay
        self.progress = np.array([0, -1, 0], np.int64)
        self.stop = np.zeros(1, np.int64)
        self.n = len(lay.offsets)
        self._thread = None
        if lay.compression in (3, 4) or self.n == 0:    # ZSTD: unchecked (see module doc)
            self.progress[0] = self.n
            return
        kinds = np.array([KINDS.get(lay.streams[s].type, 0) if s in lay.streams else 0
                          for s in lay.stream_ids.tolist()], np.int64)
        self._args = (np.memmap(path, np.uint8, "r"), lay.offsets, lay.sizes, kinds,
                      lay.compression in (1, 2), self.progress, self.stop)
        if background:
            self._thread = threading.Thread(target=self._run, name="aedat4-check", daemon=True)
            self._thread.start()
        else:
            self._run()

    def _run(self) -> None:
        try:
            _check_packets(*self._args)
        finally:
            self._args = None   # drop the memmap

    def wait(self, k: int) -> None:
        if k < self.progress[0] or k >= self.n:     # passed already (the usual case)
            return
        pause = 0.0
        while True:
            finished = self._thread is None or not self._thread.is_alive()
            bad, code = int(self.progress[1]), int(self.progress[2])
            if 0 <= bad <= k:
                self._fail(bad, code)
            if int(self.progress[0]) > k:
                return
            if finished:
                raise SourceError(f"{self.path}: packet check stopped before packet {k}")
            time.sleep(pause)
            pause = min(pause * 2 or 1e-5, 1e-3)

    def wait_all(self) -> None:
        self.wait(self.n - 1)

    def _fail(self, k: int, code: int) -> None:
        lay = self.lay
        sid = int(lay.stream_ids[k])
        name = lay.streams[sid].name if sid in lay.streams else f"stream {sid}"
        what = "its contents are damaged (bad type tag or offsets)" if code == _FB_ERROR else \
            LZ4_ERRORS.get(code, f"error {code}")
        raise SourceError(f"{self.path}: corrupt packet {k} ({name}) at byte "
                          f"{int(lay.offsets[k]) - 8}: {what}"
                          + repair_hint(self.path, "keeps every intact packet"))

    def close(self) -> None:
        self.stop[0] = 1
        if self._thread is not None:
            self._thread.join()
            self._thread = None
