"""Prophesee recordings: RAW (EVT 2.0 / EVT 3.0) and DAT (Event2d / CD) readers, plus writers.

Readers (registered for ".raw" and ".dat"):
- `open_raw(path, ...)`: a `% key value` text header, then EVT 2.0 (32-bit) or EVT 3.0 (16-bit)
  little-endian words, decoded by the Numba kernels in `evt_codec`. The file is read in chunks
  of `chunk_bytes` (8 MiB) with the decoder state carried across chunks, so memory stays bounded
  whatever the file size; packets hold at most `packet_events` events (131072) and are cut where
  the buffer fills, not where a chunk ends, so the output does not depend on the chunk size.
- `open_dat(path, ...)`: a `%` header, two bytes (event type 0x00 Event2d or 0x0C CD, event size
  8), then 8-byte records: uint32 t (us), uint32 with x in bits 0-13, y in bits 14-27 and the
  polarity in bit 28. A ".dat" that starts with `#!AER-DAT` is a jAER AEDAT 2.0 file and goes to
  `evstream.sources.aedat2.open_aedat2` instead.

Sensor size, in this order; `resolution_note` always says where it came from:
1. the header: `% format EVT3;height=720;width=1280`, `% geometry 1280x720`, DAT `% Width/Height`;
2. (RAW) the sensor the header names: plugin_name (hal_plugin_gen3_fx3 -> Gen3 VGA 640x480,
   gen41 -> 1280x720, ...), else system_ID, else sensor_generation (tables below, from
   Prophesee's own plugin tables). Older RAW files have no geometry line, and a fixed fallback
   such as 1280x720 gets every Gen3 VGA file wrong, so we never assume one;
3. `width=` / `height=` options (--width/--height), which the file's own size overrides;
4. inferred from the data (max x + 1, max y + 1), which costs one extra decoding pass.

Bad input is a one-line SourceError naming the file and the byte offset: not a Prophesee file,
an encoding we do not read (EVT 2.1, ...), no data after the header, a word or record type the
format does not define. A last word (or DAT record) cut short is not an error: the reader stops
at the last complete one and records a note (`notes`, also in `describe()`). Time going
backwards and events outside the sensor are the base class's `bad_events` policy.

Writers: `RawWriter` (EVT 2.0 / 3.0) and `DatWriter` stream packets into a file as they come
(the interface of stream_writer.StreamWriter; `evstream convert` / `record` through
sources/writers.py); `write_evt2`, `write_evt3`, `write_dat` write one array of sorted
EVENT_DTYPE events (and, for RAW, optional TRIGGER_DTYPE triggers) through them, for tests and
benchmarks. The readers read either back exactly. EVT 3.0 uses VECT_12 / VECT_8 words for runs
of same-t, same-row, same-polarity neighbours and ADDR_X otherwise.
"""

from __future__ import annotations

import logging
import os
import re

import numpy as np

from evstream.errors import SourceError
from evstream.sources import evt_codec as codec
from evstream.sources import register_reader
from evstream.sources.base import EventSource
from evstream.sources.stream_writer import NAMES, Held, StreamWriter
from evstream.types import EVENT_DTYPE, TRIGGER_DTYPE, Packet

log = logging.getLogger(__name__)

CHUNK_BYTES = 8 << 20
PACKET_EVENTS = 1 << 17
PACKET_TRIGGERS = 1 << 12
MAX_HEADER_LINE = 1 << 16

# Sensors, keyed by the name inside a HAL plugin name (hal_plugin_<name>_<board>).
SENSORS = {
    "gen3": ("Gen3 VGA", 640, 480),
    "gen31": ("Gen3.1 VGA", 640, 480),
    "gen4": ("Gen4 HD", 1280, 720),
    "gen41": ("Gen4.1 HD", 1280, 720),
    "imx636": ("IMX636 HD", 1280, 720),
    "imx646": ("IMX646 HD", 1280, 720),
    "imx637": ("IMX637 VGA", 640, 512),
    "imx647": ("IMX647 VGA", 640, 512),
    "genx320": ("GenX320", 320, 320),
}
# Prophesee board system IDs (the `% system_ID` header value) -> sensor.
SYSTEM_IDS = {
    **dict.fromkeys((0x15, 0x17, 0x19, 0x1D, 0x21, 0x97, 0x99, 0xA1), "gen3"),
    **dict.fromkeys((0x1C, 0x22, 0x23, 0x28, 0x29, 0xA2), "gen31"),
    **dict.fromkeys((0x1A, 0x1E, 0x1F, 0x20, 0x2E, 0x9A), "gen4"),
    **dict.fromkeys((0x27, 0x30), "gen41"),
    **dict.fromkeys((0x31, 0x32, 0x3A), "imx636"),
    0x34: "imx637", 0x35: "imx646", 0x36: "imx647", 0x40: "genx320",
}
# `% sensor_generation` / `% generation` -> sensor. 4.2 is left out on purpose: it is both the
# IMX636 (1280x720) and the IMX637 (640x512).
GENERATIONS = {"3.0": "gen3", "3": "gen3", "3.1": "gen31", "4.0": "gen4", "4": "gen4",
               "4.1": "gen41", "320": "genx320", "320.0": "genx320"}
# Plugins that only ever wrote EVT 2.0 (for old headers with no `% evt` line).
EVT2_ONLY_SENSORS = {"gen3"}

_ENCODINGS = {"2.0": "2.0", "evt2": "2.0", "evt2.0": "2.0", "3.0": "3.0", "evt3": "3.0",
              "evt3.0": "3.0"}
_WORD = {"2.0": (4, "<u4", codec.decode_evt2, codec.new_evt2_state),
         "3.0": (2, "<u2", codec.decode_evt3, codec.new_evt3_state)}

DAT_TYPES = {0x00: "Event2d", 0x0C: "CD"}
DAT_RECORD = np.dtype([("t", "<u4"), ("w", "<u4")])


# -- header ------------------------------------------------------------------------------------

def read_header(f) -> tuple[dict[str, str], int]:
    """Parse the `% key value` lines at the start of an open binary file.

    Returns ({lower-case key: value}, byte offset of the first data byte). The header ends at
    `% end` or at the first line that is not text starting with "%" (a data word may start with
    the byte "%", but binary data is almost never a line of text).
    """
    f.seek(0)
    header: dict[str, str] = {}
    offset = 0
    while True:
        line = f.readline(MAX_HEADER_LINE)
        if not line.startswith(b"%") or not _printable(line):
            break
        text = line.decode("utf-8").strip()[1:].strip()
        offset += len(line)
        key, _, value = text.partition(" ")
        if key.lower() == "end" and not value:
            break
        if key:
            header.setdefault(key.lower(), value.strip())
    return header, offset


def _printable(line: bytes) -> bool:
    """True for a line of text (UTF-8, no control characters but a tab and the line end)."""
    body = line[:-1] if line.endswith(b"\n") else line
    body = body[:-1] if body.endswith(b"\r") else body
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return all(c == "\t" or (c >= " " and c != "\x7f") for c in text)


def _format_params(value: str) -> tuple[str, dict[str, str]]:
    """`EVT3;height=720;width=1280` -> ("EVT3", {"height": "720", "width": "1280"})."""
    name, *rest = value.split(";")
    params = {}
    for item in rest:
        k, _, v = item.partition("=")
        params[k.strip().lower()] = v.strip()
    return name.strip(), params


def _sensor_from_header(header: dict[str, str]) -> tuple[str | None, str]:
    """(sensor key or None, which header line named it)."""
    plugin = header.get("plugin_name", "")
    m = re.search(r"hal_plugin_(gen\d+|imx\d+|genx320)", plugin.lower())
    if m and m.group(1) in SENSORS:
        return m.group(1), f"plugin_name {plugin}"
    sid = header.get("system_id")
    if sid:
        try:
            key = SYSTEM_IDS.get(int(sid, 0) if sid.lower().startswith("0x") else int(sid))
        except ValueError:
            key = None
        if key:
            return key, f"system_ID {sid}"
    gen = header.get("sensor_generation") or header.get("generation")
    if gen and gen.strip() in GENERATIONS:
        return GENERATIONS[gen.strip()], f"sensor_generation {gen}"
    return None, ""


def _geometry(value: str | None):
    m = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", value or "")
    return (int(m.group(1)), int(m.group(2))) if m else None


def _choose_resolution(path, from_file, width, height, infer) -> tuple[int, int, str]:
    """from_file: (w, h, note) or None; infer: () -> (w, h). Returns (w, h, resolution_note)."""
    if from_file is not None:
        w, h, note = from_file
        if (width is not None or height is not None) and (width, height) != (w, h):
            note += f" (--width/--height {width}x{height} ignored)"
        return w, h, note
    if width is not None and height is not None:
        return int(width), int(height), (f"{width}x{height} from --width/--height "
                                         "(the file does not say)")
    if width is not None or height is not None:
        raise SourceError(f"{path}: the file does not give its sensor size; "
                          "give both --width and --height")
    w, h = infer()
    return w, h, (f"{w}x{h} inferred from the data (max x + 1, max y + 1): the file does not say; "
                  "set --width/--height if the sensor is larger")


class _PropheseeFile(EventSource):
    """What the RAW and DAT readers share: the name, `notes` (each said once, also logged) and
    the open data file `_file` that close() releases."""

    def __init__(self, path, *, bad_events=None, filters=None):
        self.name = os.fspath(path)
        super().__init__(bad_events=bad_events, filters=filters)
        self.notes: list[str] = []
        self._file = None

    def _note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)
            log.warning("%s: %s", self.name, text)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


# -- RAW (EVT 2.0 / 3.0) --------------------------------------------------------------------------

class RawSource(_PropheseeFile):
    """A Prophesee .raw recording in EVT 2.0 or EVT 3.0 (see the module doc)."""

    def __init__(self, path, *, width=None, height=None, bad_events=None, filters=None,
                 chunk_bytes=CHUNK_BYTES, packet_events=PACKET_EVENTS):
        super().__init__(path, bad_events=bad_events, filters=filters)
        self.chunk_bytes = int(chunk_bytes)
        self.packet_events = max(int(packet_events), 2 * codec.MAX_VECTOR_EVENTS)
        with open(self.name, "rb") as f:
            header, self._data_offset = read_header(f)
            size = os.fstat(f.fileno()).st_size
        self.header = header
        if not header:
            raise SourceError(f"{self.name}: not a Prophesee RAW file (it does not start with "
                              "'% ' header lines)")
        self.encoding = self._encoding(header)
        self._word_bytes, self._word_dtype, self._kernel, self._new_state = _WORD[self.encoding]
        data_bytes = size - self._data_offset
        if data_bytes < self._word_bytes:
            raise SourceError(f"{self.name}: no event data after the header (header ends at byte "
                              f"offset {self._data_offset}, file size {size})")
        self.sensor, named_by = _sensor_from_header(header)
        evt = "EVT2" if self.encoding == "2.0" else "EVT3"
        parts = [header.get("integrator_name") or "Prophesee"]
        if self.sensor:
            parts.append(self.sensor)
        parts.append(evt)
        if header.get("serial_number"):
            parts.append(f"s/n {header['serial_number']}")
        self.camera = " ".join(parts)
        self.skipped_words = 0   # words before the first TIME_HIGH (no time to give them)
        self.rowless_events = 0  # EVT3 events before any ADDR_Y / VECT_BASE_X
        self.width, self.height, self.resolution_note = _choose_resolution(
            self.name, self._header_size(header, named_by), width, height, self._infer_size)

    def _encoding(self, header) -> str:
        fmt = header.get("format")
        if fmt:
            name = _format_params(fmt)[0]
        elif header.get("evt"):
            name = header["evt"]
        else:
            key, _ = _sensor_from_header(header)
            if key in EVT2_ONLY_SENSORS:
                return "2.0"
            raise SourceError(f"{self.name}: the header names no event encoding (no '% evt' or "
                              "'% format' line)")
        version = _ENCODINGS.get(name.strip().lower().replace(" ", ""))
        if version is None:
            raise SourceError(f"{self.name}: unsupported event encoding {name!r} (this reader "
                              "reads EVT 2.0 and EVT 3.0)")
        return version

    def _header_size(self, header, named_by):
        if header.get("format"):
            params = _format_params(header["format"])[1]
            try:
                w, h = int(params["width"]), int(params["height"])
                return w, h, f"{w}x{h} from the header's format line"
            except (KeyError, ValueError):
                pass
        geo = _geometry(header.get("geometry"))
        if geo:
            return geo[0], geo[1], f"{geo[0]}x{geo[1]} from the header's geometry line"
        if self.sensor:
            label, w, h = SENSORS[self.sensor]
            return w, h, (f"{w}x{h} from the header's {named_by} ({label} sensor; "
                          "the file has no geometry line)")
        return None

    def _infer_size(self):
        max_x = max_y = -1
        for ev, _ in self._decode():
            if len(ev):
                max_x = max(max_x, int(ev["x"].max()))
                max_y = max(max_y, int(ev["y"].max()))
        if max_x < 0:
            raise SourceError(f"{self.name}: no events to infer the sensor size from; "
                              "give --width/--height")
        return max_x + 1, max_y + 1

    def _read(self):
        for ev, tr in self._decode():
            yield Packet(events=ev, triggers=tr)
        if self.skipped_words:
            self._note(f"skipped {self.skipped_words} words before the first TIME_HIGH word "
                       "(their time is unknown)")
        if self.rowless_events:
            self._note(f"dropped {self.rowless_events} events that came before any row address")

    def _decode(self):
        """Yield (events, triggers) arrays, each at most packet_events / PACKET_TRIGGERS long."""
        wbytes, kernel = self._word_bytes, self._kernel
        state = self._new_state()
        ev, tr = np.empty(self.packet_events, EVENT_DTYPE), np.empty(PACKET_TRIGGERS, TRIGGER_DTYPE)
        n_ev = n_tr = 0
        data_bytes = os.path.getsize(self.name) - self._data_offset
        buf = np.empty(max(min(self.chunk_bytes, data_bytes), wbytes), dtype=np.uint8)
        view = memoryview(buf)
        pending = 0      # bytes of an incomplete word carried to the next read
        word_base = 0    # index (in the data section) of the first word in buf
        with open(self.name, "rb") as f:
            self._file = f
            f.seek(self._data_offset)
            while True:
                got = f.readinto(view[pending:])
                total = pending + got
                nw = total // wbytes
                words = buf[:nw * wbytes].view(self._word_dtype)
                i = 0
                while i < nw:
                    i, n_ev, n_tr, status = kernel(words, i, state, ev["t"], ev["x"], ev["y"],
                                                   ev["p"], n_ev, tr["t"], tr["type"], n_tr)
                    if status != codec.OK:
                        self._bad_word(int(words[i]), word_base + i)
                    if i < nw:  # an output buffer is full
                        yield ev[:n_ev], tr[:n_tr]
                        ev = np.empty(self.packet_events, EVENT_DTYPE)
                        tr = np.empty(PACKET_TRIGGERS, TRIGGER_DTYPE)
                        n_ev = n_tr = 0
                tail = total - nw * wbytes
                buf[:tail] = buf[nw * wbytes:total].copy()
                pending = tail
                word_base += nw
                if got == 0:
                    break
        self._file = None
        if n_ev or n_tr:
            yield ev[:n_ev].copy(), tr[:n_tr].copy()
        self.skipped_words = int(state[codec.SKIPPED])
        self.rowless_events = int(state[codec.NO_ROW])
        if pending:
            end = self._data_offset + word_base * wbytes
            self._note(f"the file ends with {pending} bytes that are not a whole "
                       f"{wbytes}-byte word (truncated recording); read up to byte offset {end}")

    def _bad_word(self, word: int, index: int):
        offset = self._data_offset + index * self._word_bytes
        bits = 32 if self.encoding == "2.0" else 16
        kind = word >> (bits - 4)
        raise SourceError(f"{self.name}: corrupt EVT {self.encoding} data at byte offset {offset}: "
                          f"word 0x{word:0{bits // 4}x} has undefined event type 0x{kind:x}")

    def describe(self) -> dict:
        return {**super().describe(), "encoding": f"EVT {self.encoding}", "notes": list(self.notes)}


def open_raw(path, *, width=None, height=None, bad_events=None, filters=None,
             chunk_bytes=None, packet_events=None) -> RawSource:
    """Open a Prophesee .raw (EVT 2.0 / EVT 3.0) recording."""
    return RawSource(path, width=width, height=height, bad_events=bad_events, filters=filters,
                     chunk_bytes=chunk_bytes or CHUNK_BYTES,
                     packet_events=packet_events or PACKET_EVENTS)


# -- DAT ----------------------------------------------------------------------------------------

class DatSource(_PropheseeFile):
    """A Prophesee .dat recording of Event2d (0x00) or CD (0x0C) events (see the module doc)."""

    def __init__(self, path, *, width=None, height=None, bad_events=None, filters=None,
                 chunk_bytes=CHUNK_BYTES, packet_events=PACKET_EVENTS):
        super().__init__(path, bad_events=bad_events, filters=filters)
        self.records_per_read = max(1, min(int(chunk_bytes) // DAT_RECORD.itemsize,
                                           int(packet_events)))
        with open(self.name, "rb") as f:
            header, offset = read_header(f)
            f.seek(offset)
            type_size = f.read(2)
            size = os.fstat(f.fileno()).st_size
        self.header = header
        if not header:
            raise SourceError(f"{self.name}: not a Prophesee DAT file (it does not start with "
                              "'% ' header lines) nor a jAER AEDAT 2.0 file ('#!AER-DAT')")
        if len(type_size) < 2:
            raise SourceError(f"{self.name}: no event data after the header (header ends at byte "
                              f"offset {offset}, file size {size})")
        ev_type, ev_size = type_size
        if ev_type not in DAT_TYPES:
            raise SourceError(f"{self.name}: unsupported DAT event type 0x{ev_type:02x} at byte "
                              f"offset {offset} (this reader reads 0x00 Event2d and 0x0C CD)")
        if ev_size != DAT_RECORD.itemsize:
            raise SourceError(f"{self.name}: DAT event size {ev_size} at byte offset {offset + 1} "
                              f"(expected {DAT_RECORD.itemsize})")
        self._data_offset = offset + 2
        self.n_records = (size - self._data_offset) // DAT_RECORD.itemsize
        self._tail = (size - self._data_offset) % DAT_RECORD.itemsize
        if self.n_records == 0:
            raise SourceError(f"{self.name}: no events after the DAT header (data starts at byte "
                              f"offset {self._data_offset}, file size {size})")
        version = header.get("version", "?")
        self.camera = f"Prophesee DAT v{version} {DAT_TYPES[ev_type]}"
        from_file = None
        if header.get("width", "").isdigit() and header.get("height", "").isdigit():
            w, h = int(header["width"]), int(header["height"])
            from_file = w, h, f"{w}x{h} from the header's Width/Height lines"
        elif _geometry(header.get("geometry")):
            w, h = _geometry(header.get("geometry"))
            from_file = w, h, f"{w}x{h} from the header's geometry line"
        self.width, self.height, self.resolution_note = _choose_resolution(
            self.name, from_file, width, height, self._infer_size)

    def _chunks(self):
        """Yield raw DAT_RECORD arrays of at most records_per_read records."""
        with open(self.name, "rb") as f:
            self._file = f
            f.seek(self._data_offset)
            left = self.n_records
            while left > 0:
                n = min(left, self.records_per_read)
                data = f.read(n * DAT_RECORD.itemsize)
                if len(data) < n * DAT_RECORD.itemsize:  # file shrank while we read it
                    n = len(data) // DAT_RECORD.itemsize
                    left = n
                if n == 0:
                    break
                yield np.frombuffer(data, dtype=DAT_RECORD, count=n)
                left -= n
        self._file = None

    def _infer_size(self):
        max_x = max_y = 0
        for rec in self._chunks():
            w = rec["w"]
            max_x = max(max_x, int((w & 0x3FFF).max()))
            max_y = max(max_y, int(((w >> 14) & 0x3FFF).max()))
        return max_x + 1, max_y + 1

    def _read(self):
        for rec in self._chunks():
            w = rec["w"]
            ev = np.empty(len(rec), EVENT_DTYPE)
            ev["t"] = rec["t"]
            ev["x"] = w & 0x3FFF
            ev["y"] = (w >> 14) & 0x3FFF
            ev["p"] = (w >> 28) & 1
            yield Packet(events=ev)
        if self._tail:
            end = self._data_offset + self.n_records * DAT_RECORD.itemsize
            self._note(f"the file ends with {self._tail} bytes that are not a whole 8-byte "
                       f"event (truncated recording); read up to byte offset {end}")

    def describe(self) -> dict:
        return {**super().describe(), "notes": list(self.notes)}


def open_dat(path, *, width=None, height=None, bad_events=None, filters=None,
             chunk_bytes=None, packet_events=None, **aedat2_options) -> EventSource:
    """Open a Prophesee .dat recording, or a jAER AEDAT 2.0 file that was named .dat.

    Options other than the named ones are passed to the AEDAT 2.0 reader (jAER files only).
    """
    with open(path, "rb") as f:
        magic = f.read(9)
    if magic == b"#!AER-DAT":
        if chunk_bytes is not None or packet_events is not None:
            raise SourceError(f"{path}: is a jAER AEDAT 2.0 file; chunk_bytes/packet_events are "
                              "options of the Prophesee DAT reader")
        import inspect

        from evstream.sources.aedat2 import open_aedat2

        options = dict(width=width, height=height, bad_events=bad_events, filters=filters)
        options = {k: v for k, v in options.items() if v is not None} | aedat2_options
        try:
            inspect.signature(open_aedat2).bind(path, **options)
        except TypeError as e:
            raise SourceError(f"{path}: option not valid for jAER AEDAT 2.0 files ({e})") from None
        return open_aedat2(path, **options)
    if aedat2_options:
        raise SourceError(f"{path}: option {', '.join(sorted(aedat2_options))} not valid for "
                          "Prophesee DAT files")
    return DatSource(path, width=width, height=height, bad_events=bad_events, filters=filters,
                     chunk_bytes=chunk_bytes or CHUNK_BYTES,
                     packet_events=packet_events or PACKET_EVENTS)


register_reader(".raw", open_raw)
register_reader(".dat", open_dat)


# -- writers ------------------------------------------------------------------------------------

def _checked(events, width, height, max_side, max_t=None) -> np.ndarray:
    ev = np.asarray(events)
    if ev.dtype != EVENT_DTYPE:
        raise TypeError(f"events must be EVENT_DTYPE, not {ev.dtype}")
    if not (0 < width <= max_side and 0 < height <= max_side):
        raise ValueError(f"sensor {width}x{height} does not fit this format (max side {max_side})")
    if len(ev):
        t = ev["t"]
        if t[0] < 0 or (len(t) > 1 and bool(np.any(t[1:] < t[:-1]))):
            raise ValueError("events must have t >= 0 and be sorted by t")
        if max_t is not None and int(t[-1]) > max_t:
            raise ValueError(f"t = {int(t[-1])} us does not fit this format (max {max_t})")
        if int(ev["x"].max()) >= width or int(ev["y"].max()) >= height:
            raise ValueError(f"events outside the {width}x{height} sensor")
    return ev


def _checked_triggers(triggers) -> np.ndarray:
    tr = np.zeros(0, TRIGGER_DTYPE) if triggers is None else np.asarray(triggers)
    if tr.dtype != TRIGGER_DTYPE:
        raise TypeError(f"triggers must be TRIGGER_DTYPE, not {tr.dtype}")
    t = tr["t"]
    if len(t) and (t[0] < 0 or bool(np.any(t[1:] < t[:-1]))):
        raise ValueError("triggers must have t >= 0 and be sorted by t")
    return tr


def _raw_header(evt: str, width: int, height: int) -> bytes:
    name = "EVT2" if evt == "2.0" else "EVT3"
    lines = [f"% evt {evt}", f"% format {name};height={height};width={width}",
             f"% geometry {width}x{height}", "% integrator_name evstream", "% end"]
    return ("\n".join(lines) + "\n").encode("ascii")


EVT_TIME_LIMIT_US = 1 << 40       # RawWriter: later times would need too many TIME_HIGH words
EVT_TRIGGER_TYPES = (1, 2)        # what an EXT_TRIGGER word's edge value can say


class RawWriter(StreamWriter):
    """Stream EVT 2.0 / EVT 3.0 words into a .raw file (StreamWriter's interface).

    Events and external triggers (dv TriggerType 1 rising / 2 falling edge: the EXT_TRIGGER
    word's edge value; other types have no EVT word and are dropped and counted) are merged
    into one time-ordered word stream; the encoder state is carried from write to write, so the
    words decode to what one call over all of it gives (only an EVT 3.0 vector run is not
    continued across two writes). A trigger later than the last event
    written is held until the events pass it (or close()); one earlier than what was already
    written is dropped and counted. Times are words counting from 0 (the decoder unwraps
    them), so the writer stops at EVT_TIME_LIMIT_US (2^40 us, 12.7 days: the TIME_HIGH words
    to get there pass 100,000 for EVT 3.0, and an epoch time would take 10^8). Coordinates have
    11 bits: sensors up to 2048x2048. Frames and IMU samples: not in this format (dropped,
    counted). The header (format line with the geometry) is written at once and the words at
    every write(): a killed writer leaves a file the reader reads up to the last whole word.
    """

    suffixes = (".raw",)
    carries = ("events", "triggers")
    cannot = {"frames": "Prophesee RAW holds no frames",
              "imu": "evstream writes no IMU words into Prophesee RAW"}
    max_t_us = EVT_TIME_LIMIT_US
    max_t_why = "times up to 2^40 us here"

    def __init__(self, path, *, width, height, evt: str = "3.0", **kw):
        if evt not in _WORD:
            raise ValueError(f"evt must be '2.0' or '3.0', not {evt!r}")
        self.evt = evt
        self.format_name = "EVT 2.0" if evt == "2.0" else "EVT 3.0"
        super().__init__(path, width=width, height=height, **kw)
        self._fits(2048, 2048, "11-bit x and y")
        self._encode = codec.encode_evt2 if evt == "2.0" else codec.encode_evt3
        self._word_dtype = _WORD[evt][1]
        self._state = codec.new_encoder_state()
        self._held = Held(TRIGGER_DTYPE)
        self._last_word_t = -1
        self._f = self._create()
        self._f.write(_raw_header(evt, self.width, self.height))
        self._sync()

    def _write(self, events, frames, imu, triggers):
        if len(triggers):
            tr = triggers[np.argsort(triggers["t"], kind="stable")]
            ok = np.isin(tr["type"], EVT_TRIGGER_TYPES)
            self._drop("triggers", len(tr) - int(ok.sum()), f"{self.format_name} triggers are "
                       "external edges only (dv TriggerType 1 rising, 2 falling)")
            tr = tr[ok]
            late = tr["t"] < self._last_word_t
            self._drop("triggers", int(late.sum()), "came after later events (the file is one "
                       "time-ordered stream of words)")
            tr = tr[~late]
            self._held.add(tr["t"], tr)
        tr = self._held.take(int(events["t"][-1]))[1] if len(events) else triggers[:0]
        self._words(events, tr)

    def _words(self, ev, tr) -> None:
        n = len(ev) + len(tr)
        if not n:
            return
        t_max = max(int(ev["t"][-1]) if len(ev) else 0, int(tr["t"][-1]) if len(tr) else 0)
        if self.evt == "2.0":
            cap = 2 * n + (t_max >> 6) // ((1 << 27) - 1) + 4
        else:
            cap = 4 * n + (t_max >> 12) // 2047 + 4
        out = np.empty(cap, dtype=self._word_dtype)
        k = self._encode(ev["t"], ev["x"], ev["y"], ev["p"], tr["t"], tr["type"], out,
                         self._state)
        self._f.write(out[:k].tobytes())
        self._sync()
        self._last_word_t = max(self._last_word_t, t_max)
        self.counts["triggers"] += len(tr)
        self.written["events"] += len(ev)
        self.written["triggers"] += len(tr)

    def _finish(self):
        _, tr = self._held.take(None)
        self._words(np.zeros(0, EVENT_DTYPE), tr)


class DatWriter(StreamWriter):
    """Stream a Prophesee DAT v2 file of CD (0x0C) events (StreamWriter's interface): the
    header (with Width/Height) at once, 8-byte records at every write(), so a killed writer
    leaves a file read up to its last whole record. Times are uint32 us (up to 71.6 min from
    0), coordinates 14 bits (sensors up to 16384x16384). Triggers, frames and IMU: not in this
    format (dropped, counted)."""

    format_name = "DAT"
    suffixes = (".dat",)
    cannot = {k: f"Prophesee DAT holds CD events only (no {NAMES[k]})"
              for k in ("frames", "imu", "triggers")}
    max_t_us = (1 << 32) - 1
    max_t_why = "uint32 times, up to 71.6 min"

    def __init__(self, path, *, width, height, **kw):
        super().__init__(path, width=width, height=height, **kw)
        self._fits(1 << 14, 1 << 14, "14-bit x and y")
        self._f = self._create()
        self._f.write(f"% Data file containing CD events\n% Version 2\n% Width {self.width}\n"
                      f"% Height {self.height}\n".encode("ascii"))
        self._f.write(bytes([0x0C, DAT_RECORD.itemsize]))
        self._sync()

    def _write(self, events, frames, imu, triggers):
        if not len(events):
            return
        rec = np.empty(len(events), DAT_RECORD)
        rec["t"] = events["t"]
        rec["w"] = (events["x"].astype(np.uint32) | (events["y"].astype(np.uint32) << 14)
                    | ((events["p"] > 0).astype(np.uint32) << 28))
        self._f.write(rec.tobytes())
        self._sync()
        self.written["events"] += len(events)


def _write_raw(path, events, width, height, triggers, evt):
    ev = _checked(events, width, height, 2048)
    tr = _checked_triggers(triggers)
    with RawWriter(path, width=width, height=height, evt=evt) as w:
        w.write(Packet(events=ev, triggers=tr))


def write_evt2(path, events, width, height, *, triggers=None) -> None:
    """Write sorted EVENT_DTYPE events (+ TRIGGER_DTYPE triggers) as an EVT 2.0 .raw file."""
    _write_raw(path, events, int(width), int(height), triggers, "2.0")


def write_evt3(path, events, width, height, *, triggers=None) -> None:
    """Write sorted EVENT_DTYPE events (+ TRIGGER_DTYPE triggers) as an EVT 3.0 .raw file."""
    _write_raw(path, events, int(width), int(height), triggers, "3.0")


def write_dat(path, events, width, height) -> None:
    """Write sorted EVENT_DTYPE events as a Prophesee DAT v2 file of CD (0x0C) events."""
    ev = _checked(events, int(width), int(height), 1 << 14, max_t=(1 << 32) - 1)
    with DatWriter(path, width=width, height=height) as w:
        w.write(Packet(events=ev))
