"""Recovering the intact packets of a damaged or truncated AEDAT 4.0 file (`evstream repair`).

A finished recording cut short (copied before it was complete, a disk that lost power) has a
header that points at a packet table past its end, so dv-processing refuses the whole file;
one with a damaged packet in the middle stops every reader there. The packets around the
damage are intact. This module keeps every one of them:

- `salvage(path) -> Salvage` reads the header and stream list (they must be intact: without
  them nothing in the file can be read), then walks the packets from the first byte after the
  header, by their 8-byte headers (stream id, size), up to the packet table or the end of the
  file. A packet is kept only if it passes aedat4_check's packet check, the one every read goes
  through. After a packet that fails, or a header that cannot be one (a stream the header does
  not list, a size past the end), the walk looks for the next packet: the next place where a
  payload starts with the LZ4 frame magic (uncompressed files: a known type identifier) and a
  packet there passes the check. What lies between is lost, and reported with its byte, size
  and why. The input's own packet table, where it is readable, is never trusted for where the
  packets are; it only tells what was lost (its packets the walk did not keep: how many, their
  elements per stream, their time range). ZSTD-compressed files are refused: there is no ZSTD
  decoder here, so their packets cannot be checked (dv-processing hangs or crashes on some
  damaged ones).
- `write_repaired(salv, out)` writes the kept packets byte for byte (not recompressed) into a
  new file with the same stream list, a new packet table and a header that points at it, then
  reads that file back with dv-processing (every packet of every camera) before it takes the
  name OUT (temp file + rename: a failure leaves no OUT). The table's element counts and time
  ranges are decoded from each packet the way dv-processing's writer computes them (events:
  first and last event, frames: the frame's time stamp, IMU/triggers: first and last sample);
  the tests hold them equal to the tables dv wrote in the real recordings. A packet of a type
  evstream does not know keeps the input table's entry, or, without one, the previous packet's
  end time and 0 elements.
"""

from __future__ import annotations

import mmap
import os
import secrets
import struct
from dataclasses import dataclass, field

import numba
import numpy as np

from evstream.errors import EvstreamError, SourceError
from evstream.sources.aedat4_check import (COMPRESSION, KINDS, Layout, _Buf, _check_packets,
                                           _fb_field, _u32, read_header)
from evstream.sources.lz4_check import LZ4_ERRORS, _lz4_frame, _xxh32_small
from evstream.sources.writer import io_header

LZ4_MAGIC = b"\x04\x22\x4d\x18"
NAMES = {"EVTS": "events", "FRME": "frames", "IMUS": "imu", "TRIG": "triggers"}
RAW_BLOCK = 1 << 16                  # the new table's LZ4 frame: uncompressed 64 KiB blocks


@dataclass
class Damage:
    byte: int            # where the lost bytes start
    size: int            # how many bytes are lost there
    what: str


@dataclass
class Salvage:
    path: str
    layout: Layout                       # header and streams (no packets)
    offsets: np.ndarray                  # kept packets: payload offset in the input,
    sizes: np.ndarray                    # payload size,
    stream_ids: np.ndarray               # stream id,
    meta: np.ndarray                     # (n, 3): elements, first and last time stamp (us)
    damage: list[Damage] = field(default_factory=list)
    table: str = "none"                  # the input's table: intact, none, cut off, damaged
    # the input table's rows (payload offset, stream id, elements, t start, t end), if readable
    table_rows: np.ndarray | None = None

    @property
    def bytes_lost(self) -> int:
        return sum(d.size for d in self.damage)

    def counts(self, rows: np.ndarray | None = None) -> dict[str, int]:
        """Elements per stream kind (events, frames, imu, triggers) over the kept packets, or
        over `rows` of the input table (stream id, elements in columns 1 and 2)."""
        sids, n = (self.stream_ids, self.meta[:, 0]) if rows is None else (rows[:, 1], rows[:, 2])
        out = dict.fromkeys(NAMES.values(), 0)
        for sid, info in self.layout.streams.items():
            if info.type in NAMES:
                out[NAMES[info.type]] += int(n[sids == sid].sum())
        return out

    def report(self) -> dict:
        """What was kept and what was lost, as `evstream repair --json` prints it."""
        kept = self.counts()
        ev_sids = [s for s, i in self.layout.streams.items() if i.type == "EVTS"]
        ev = np.isin(self.stream_ids, ev_sids) & (self.meta[:, 0] > 0)
        has = self.meta[:, 0] > 0
        lost_rows = None
        if self.table_rows is not None:
            lost_rows = self.table_rows[~np.isin(self.table_rows[:, 0], self.offsets)]
        d = {
            "in": self.path,
            "compression": COMPRESSION[self.layout.compression],
            "input_bytes": self.layout.file_size,
            "table": self.table,
            "packets_kept": len(self.offsets),
            **kept,
            "t_start_us": int(self.meta[has, 1].min()) if has.any() else None,
            "t_end_us": int(self.meta[has, 2].max()) if has.any() else None,
            "events_t_start_us": int(self.meta[ev, 1].min()) if ev.any() else None,
            "events_t_end_us": int(self.meta[ev, 2].max()) if ev.any() else None,
            "bytes_lost": self.bytes_lost,
            "damaged": [{"byte": x.byte, "bytes": x.size, "what": x.what} for x in self.damage],
            # from the input's packet table, when it was readable: exactly what is missing
            "packets_lost": None if lost_rows is None else len(lost_rows),
            "lost": None if lost_rows is None else self.counts(lost_rows),
            "lost_t_start_us": int(lost_rows[:, 3].min()) if lost_rows is not None and
            len(lost_rows) else None,
            "lost_t_end_us": int(lost_rows[:, 4].max()) if lost_rows is not None and
            len(lost_rows) else None,
        }
        return d


# -- finding the intact packets ----------------------------------------------------------------

def salvage(path: str) -> Salvage:
    """Every intact packet of the AEDAT 4.0 file at path (see the module doc)."""
    lay = read_header(path)          # SourceError: not AEDAT 4.0, header damaged
    if lay.compression in (3, 4):
        raise SourceError(f"{path}: ZSTD-compressed; evstream cannot check its packets, so it "
                          f"does not repair it")
    size = lay.file_size
    table, limit, rows = "none", size, None
    if lay.table_pos >= 0:
        if lay.data_start <= lay.table_pos < size:
            limit, table = lay.table_pos, "intact"
            rows = _table_rows(path, lay)
            if rows is None:
                table = "damaged"
        else:
            table = "cut off" if lay.table_pos >= size else "damaged"
    kinds = {sid: KINDS.get(info.type, 0) for sid, info in lay.streams.items()}
    src = np.memmap(path, np.uint8, "r") if size > lay.data_start else \
        np.zeros(0, np.uint8)
    walker = _Walker(lay, src, kinds, limit)
    with open(path, "rb") as f:
        if size > lay.data_start:
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
                walker.run(mm)
    kept = np.array(walker.kept, np.int64).reshape(-1, 3)
    meta = np.zeros((len(kept), 3), np.int64)
    _packet_meta(src, kept[:, 0].copy(), kept[:, 1].copy(),
                 np.array([kinds.get(int(s), 0) for s in kept[:, 2]], np.int64),
                 lay.compression in (1, 2), meta)
    salv = Salvage(path, lay, kept[:, 0].copy(), kept[:, 1].copy(), kept[:, 2].copy(), meta,
                   walker.damage, table, rows)
    _fill_unknown(salv)
    return salv


class _Walker:
    """The packet walk of salvage(): kept packets and the damaged stretches between them."""

    def __init__(self, lay: Layout, src, kinds: dict[int, int], limit: int):
        self.lay, self.src, self.kinds, self.limit = lay, src, kinds, limit
        self.compressed = lay.compression in (1, 2)
        self.kept: list[tuple[int, int, int]] = []      # (payload offset, size, stream id)
        self.damage: list[Damage] = []
        self.progress = np.zeros(3, np.int64)
        self.stop = np.zeros(1, np.int64)
        self.mm = None

    def run(self, mm) -> None:
        self.mm = mm
        pos = self.lay.data_start
        while pos < self.limit:
            cands, q = [], pos
            while (h := self.header(q)) is not None:
                cands.append((q + 8, h[1], h[0]))
                q += 8 + h[1]
            n_ok, code = self.check(cands)
            self.kept += cands[:n_ok]
            if n_ok < len(cands):
                bad = cands[n_ok][0] - 8
                what = f"packet of {self._stream(cands[n_ok][2])}: " + \
                    ("contents damaged (bad type tag or offsets)" if code == -100 else
                     LZ4_ERRORS.get(code, f"error {code}"))
            else:
                bad = q
                if bad >= self.limit:
                    return
                what = None
            nxt = self.resync(bad + 1)
            if what is None:
                what = self._why_not_a_header(bad, at_end=nxt is None)
            self.damage.append(Damage(bad, (self.limit if nxt is None else nxt) - bad, what))
            if nxt is None:
                return
            pos = nxt

    def header(self, q: int) -> tuple[int, int] | None:
        """(stream id, size) of a plausible packet header at q, else None."""
        if q + 8 > self.limit:
            return None
        sid, sz = struct.unpack_from("<ii", self.mm, q)
        if sid not in self.kinds or sz <= 0 or q + 8 + sz > self.limit:
            return None
        return sid, sz

    def check(self, cands: list[tuple[int, int, int]]) -> tuple[int, int]:
        """-> (how many of cands pass, in order; the error code of the first that fails)."""
        if not cands:
            return 0, 0
        arr = np.array(cands, np.int64)
        kinds = np.array([self.kinds[int(s)] for s in arr[:, 2]], np.int64)
        self.progress[:] = (0, -1, 0)
        _check_packets(self.src, arr[:, 0].copy(), arr[:, 1].copy(), kinds, self.compressed,
                       self.progress, self.stop)
        return int(self.progress[0]), int(self.progress[2])

    def _why_not_a_header(self, q: int, at_end: bool) -> str:
        if q + 8 > self.limit:
            return f"cut short inside a packet header ({self.limit - q} of its 8 bytes)"
        sid, sz = struct.unpack_from("<ii", self.mm, q)
        if sid in self.kinds and sz > 0 and q + 8 + sz > self.limit:
            if at_end:
                return (f"packet of {self._stream(sid)} cut short ({self.limit - q - 8} of its "
                        f"{sz} bytes)")
            return (f"packet of {self._stream(sid)}: damaged header (size {sz} runs past the "
                    f"end)")
        return f"not a packet header (stream id {sid}, size {sz})"

    def _stream(self, sid: int) -> str:
        info = self.lay.streams.get(sid)
        return info.name if info and info.name else f"stream {sid}"

    def resync(self, start: int) -> int | None:
        """The first position >= start where an intact packet begins, or None."""
        marks = [LZ4_MAGIC] if self.compressed else \
            [k.encode() for k in KINDS]          # uncompressed: the flatbuffer's identifier
        back = 8 if self.compressed else 16      # from the mark back to the packet header
        at = {m: self._find(m, start + back) for m in marks}
        while any(p >= 0 for p in at.values()):
            m, p = min(((m, p) for m, p in at.items() if p >= 0), key=lambda mp: mp[1])
            q = p - back
            h = self.header(q)
            if h is not None and self.check([(q + 8, h[1], h[0])])[0] == 1:
                return q
            at[m] = self._find(m, p + 1)
        return None

    def _find(self, mark: bytes, frm: int) -> int:
        p = self.mm.find(mark, frm, self.limit)
        return p


def _table_rows(path: str, lay: Layout) -> np.ndarray | None:
    """The input's packet table as rows (payload offset, stream id, elements, t start, t end),
    or None where it cannot be read."""
    with open(path, "rb") as f:
        f.seek(lay.table_pos)
        raw = f.read()
    if lay.compression in (1, 2):
        src = np.frombuffer(raw, np.uint8)
        n = _lz4_frame(src, 0, len(src), np.zeros(0, np.uint8))
        if n < 0:
            return None
        out = np.zeros(n, np.uint8)
        _lz4_frame(src, 0, len(src), out)
        raw = out.tobytes()
    try:
        b = _Buf(raw)
        root = b.table(4 + b.get("I", 4))
        vec = b.ref(root, 0)
        rows = []
        for i in range(b.get("I", vec) if vec is not None else 0):
            slot = vec + 4 + 4 * i
            t = b.table(slot + b.get("I", slot))
            pinfo = t[1][1] if len(t[1]) > 1 else 0
            rows.append((b.field(t, 0, "q", 0),
                         b.get("i", t[0] + pinfo) if pinfo else 0,
                         b.field(t, 2, "q", 0), b.field(t, 3, "q", 0), b.field(t, 4, "q", 0)))
    except ValueError:
        return None
    return np.array(rows, np.int64).reshape(-1, 5)


def _fill_unknown(salv: Salvage) -> None:
    """Table entries for packets of types evstream cannot decode (meta row -1): the input
    table's, else the previous packet's end time and 0 elements."""
    rows = salv.table_rows
    by_offset = {} if rows is None else {int(r[0]): r for r in rows}
    prev_end = 0
    for k in range(len(salv.meta)):
        if salv.meta[k, 0] < 0:
            r = by_offset.get(int(salv.offsets[k]))
            salv.meta[k] = (r[2], r[3], r[4]) if r is not None else (0, prev_end, prev_end)
        prev_end = int(salv.meta[k, 2])


@numba.njit(cache=True, inline="always")
def _i64(b, p):
    v = np.uint64(0)
    for i in range(8):
        v |= np.uint64(b[p + i]) << np.uint64(8 * i)
    return np.int64(v)


@numba.njit(cache=True, nogil=True)
def _packet_meta(src, offsets, sizes, kinds, compressed, out):
    """out[k] = (elements, first time, last time) of packet k, decoded as dv's writer counts
    them; (-1, 0, 0) for a kind evstream does not decode. Packets must have passed the check."""
    nothing = np.zeros(0, np.uint8)
    for k in range(offsets.shape[0]):
        p = offsets[k]
        kind = kinds[k]
        if kind == 0:
            out[k, 0] = -1
            continue
        if compressed:
            total = _lz4_frame(src, p, p + sizes[k], nothing)
            b = np.empty(total, np.uint8)
            _lz4_frame(src, p, p + sizes[k], b)
        else:
            b = src[p:p + sizes[k]]
        root = 4 + _u32(b, 4)
        fo = _fb_field(b, root, 0)
        if kind == 2:                                   # FRME: one frame, its time stamp
            t = _i64(b, root + fo) if fo else np.int64(0)
            out[k, 0], out[k, 1], out[k, 2] = 1, t, t
            continue
        if fo == 0:
            continue
        vec = root + fo + _u32(b, root + fo)
        n = _u32(b, vec)
        if n == 0:
            continue
        if kind == 1:                                   # EVTS: 16-byte structs, t first
            t0 = _i64(b, vec + 4)
            t1 = _i64(b, vec + 4 + 16 * (n - 1))
        else:                                           # IMUS / TRIG: tables, t first
            s0 = vec + 4
            s1 = vec + 4 + 4 * (n - 1)
            e0 = s0 + _u32(b, s0)
            e1 = s1 + _u32(b, s1)
            f0 = _fb_field(b, e0, 0)
            f1 = _fb_field(b, e1, 0)
            t0 = _i64(b, e0 + f0) if f0 else np.int64(0)
            t1 = _i64(b, e1 + f1) if f1 else np.int64(0)
        out[k, 0], out[k, 1], out[k, 2] = n, t0, t1


# -- writing the repaired file -------------------------------------------------------------------

def file_data_table(rows) -> bytes:
    """A size-prefixed "FTAB" FileDataTable flatbuffer for rows of (payload offset, stream id,
    payload size, elements, t start, t end), laid out as dv-processing lays it out (one shared
    vtable, 8-byte fields 8-aligned)."""
    n = len(rows)
    vec = 28
    vt = vec + 4 + 4 * n
    first = vt + 14
    first += (4 - first) % 8                 # entries at 4 mod 8: their int64 fields 8-aligned
    total = first + 48 * n
    out = bytearray(total)
    struct.pack_into("<II4s", out, 0, total - 4, 20 - 4, b"FTAB")
    struct.pack_into("<3H", out, 12, 6, 8, 4)               # root vtable: one field
    struct.pack_into("<iI", out, 20, 20 - 12, vec - 24)     # root table -> the vector
    struct.pack_into("<I", out, vec, n)
    struct.pack_into("<7H", out, vt, 14, 44, 12, 4, 20, 28, 36)
    for k, (offset, sid, size, elems, t0, t1) in enumerate(rows):
        e = first + 48 * k
        struct.pack_into("<I", out, vec + 4 + 4 * k, e - (vec + 4 + 4 * k))
        struct.pack_into("<iiiqqqq", out, e, e - vt, sid, size, offset, elems, t0, t1)
    return bytes(out)


def lz4_stored(data: bytes) -> bytes:
    """An LZ4 frame holding data in uncompressed blocks (valid for every LZ4 frame decoder; no
    compressor needed for the small packet table)."""
    desc = np.frombuffer(bytes([0x60, 0x40]), np.uint8)     # version 1, independent; 64 KiB
    hc = (_xxh32_small(desc, 0, 2) >> 8) & 0xFF
    out = bytearray(LZ4_MAGIC + bytes([0x60, 0x40, hc]))
    for i in range(0, len(data), RAW_BLOCK):
        block = data[i:i + RAW_BLOCK]
        out += struct.pack("<I", len(block) | 0x80000000) + block
    out += b"\0\0\0\0"
    return bytes(out)


def write_repaired(salv: Salvage, out: str) -> int:
    """The kept packets as a finished AEDAT 4.0 file at out (see the module doc); -> bytes."""
    if not salv.offsets.size:
        raise EvstreamError(f"{salv.path}: no intact packet to keep")
    folder = os.path.dirname(os.path.abspath(out))
    stem = os.path.basename(out)[:-len(".aedat4")]
    tmp = os.path.join(folder, f".{stem}.evstream-{secrets.token_hex(4)}.aedat4")
    lay = salv.layout
    xml = lay.info_xml.encode()
    try:
        with open(tmp, "wb") as f, open(salv.path, "rb") as src:
            head = b"#!AER-DAT4.0\r\n"
            header = io_header(xml, lay.compression, -1)
            f.write(head + struct.pack("<i", len(header)) + header)
            rows = []
            for offset, size, sid, (elems, t0, t1) in zip(
                    salv.offsets.tolist(), salv.sizes.tolist(), salv.stream_ids.tolist(),
                    salv.meta.tolist()):
                src.seek(offset)
                f.write(struct.pack("<ii", sid, size))
                rows.append((f.tell(), sid, size, elems, t0, t1))
                f.write(src.read(size))
            table_pos = f.tell()
            fdt = file_data_table(rows)
            f.write(lz4_stored(fdt) if lay.compression in (1, 2) else fdt)
            f.seek(len(head) + 4)
            f.write(io_header(xml, lay.compression, table_pos))
            f.flush()
            os.fsync(f.fileno())
        _read_back(tmp, salv)
        os.replace(tmp, out)
    except OSError as e:
        _unlink(tmp)
        raise EvstreamError(f"{out}: cannot write ({e.strerror})") from None
    except BaseException:
        _unlink(tmp)
        raise
    return os.path.getsize(out)


def _read_back(path: str, salv: Salvage) -> None:
    """Every packet of every camera of the repaired file through dv-processing; the element
    counts must be the table's."""
    import dv_processing as dv

    from evstream.sources.dv_shared import dv_message

    want = salv.counts()
    got = dict.fromkeys(want, 0)
    cameras = salv.layout.cameras() or [None]
    try:
        for cam in cameras:
            rec = dv.io.MonoCameraRecording(path, cam) if cam else dv.io.MonoCameraRecording(path)
            names = set(rec.getStreamNames())
            for key, method in (("events", "getNextEventBatch"), ("frames", "getNextFrame"),
                                ("imu", "getNextImuBatch"), ("triggers", "getNextTriggerBatch")):
                if key not in names:
                    continue
                while (item := getattr(rec, method)()) is not None:
                    got[key] += 1 if key == "frames" else len(item)
            del rec
    except Exception as e:  # noqa: BLE001 - a packet that passed the check and dv still refused
        raise EvstreamError(f"{salv.path}: dv-processing cannot read the repaired file "
                            f"({dv_message(e)})") from None
    if got != want:
        raise RuntimeError(f"repaired file reads back {got}, its packet table says {want}")


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
