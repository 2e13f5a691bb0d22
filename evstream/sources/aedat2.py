"""jAER AEDAT 2.0 (and 1.0) recordings: reader and writer.

File layout. The first line is `#!AER-DAT2.0`; then come `#`-prefixed text lines (jAER puts the
chip class in `# AEChip: ...` and often ~175 KB of XML preferences); then big-endian records:
int32 address + int32 timestamp (AEDAT 1.0: int16 address + int32 timestamp). The header ends
at `#End Of ASCII Header` where present, else at the first line that does not start with `#`
or that is not text (control bytes or invalid UTF-8): a data record may begin with 0x23 ('#').
AEDAT 3.x and 4.0 share the `#!AER-DAT` magic but are different formats and are refused (an
AEDAT 4.0 file must be named .aedat4: dv-processing will not open it under another suffix).

Address layouts (the chip comes from `# AEChip:`; `layout=` overrides it):
- DAVIS (DAVIS240A/B/C, DVS240 240x180, Davis346* 346x260, Davis128 128x128, Davis640
  640x480; other Davis* names get this layout and an inferred resolution):
  bit 31 = 0: DVS. y = bits 22-30, x = bits 12-21, polarity = bit 11 (1 = ON). Bit 10 set with
              no pixel bits is an external-input event (low bits 2/3/4 = falling/rising/pulse),
              delivered as a trigger (dv TriggerType 2/1/3).
  bit 31 = 1 and bits 10-11 = 3: IMU. A sample is 7 consecutive words with type code 0..6 in
              bits 28-30 (accel x, y, z, temperature, gyro x, y, z) and a signed 16-bit value in
              bits 12-27; the first word's timestamp is the sample's.
  bit 31 = 1 otherwise: APS ADC read. x, y as above, bits 10-11 = read (0 reset, 1 signal,
              2 deprecated third read: skipped and counted), bits 0-9 = ADC value.
- DVS128 (DVS128, Tmpdiff128, eDVS128): x = bits 1-7, y = bits 8-14, bit 0 = 0 means ON (jAER's
  extractor inverts it); bit 15 or bit 31 set is an external sync event (trigger type 2).

Orientation. evstream uses AEDAT4 / dv-processing's top-left origin. jAER's extractors display
DVS events at x = (W-1) - x_raw, y = y_raw with the origin at the BOTTOM left (DavisBaseCamera,
DVS128.Extractor); APS reads at x = x_raw. jAER's own AEDAT4 reader packs dv coordinates the
same way (x_raw = W-1-x, y_raw = H-1-y). So by default:
    DVS   x = (W-1) - x_raw     y = (H-1) - y_raw
    APS   x = x_raw             y = (H-1) - y_raw
`flip_y=False` keeps jAER's bottom-left y (y = y_raw). The x flip is not optional: it is what
jAER itself does and without it images come out mirrored.

IMU units (IMU_DTYPE: accel in g, gyro in deg/s, temperature in deg C), as jAER's IMUSample
getters compute them, whose signs jAER documents as those of AEDAT4 / DV IMU packets:
    accel = (-ax, ay, az) / accel_lsb_per_g     gyro = (-gx, gy, -gz) / gyro_lsb_per_dps
    temperature = raw / 340 + 35
The full-scale settings are read from the header preferences (`ImuAccelScale` = ImuAccelScaleG2
/4/8/16, `ImuGyroScale` = GyroFullScaleDegPerSec250/500/1000/2000, else the MPU-6150 register
bytes `imu4_ACCEL_CONFIG` / `imu3_GYRO_CONFIG`, FS bits 3-4), else jAER's DAVIS defaults
(ImuControl: 8 g, 1000 deg/s). LSB sizes are the MPU-6150 datasheet's: 16384/8192/4096/2048
LSB/g and 131/65.5/32.8/16.4 LSB/(deg/s) (jAER's ImuGyroScale has 63.5 for 500 deg/s, a typo).
Words that do not form a complete 7-word sample are skipped and counted (`counts.imu_orphans`).

APS frames. A frame is one reset read and one signal read per pixel; the image is
clip(reset - signal, 0, 1023) >> 2 as uint8 (H, W). A frame starts at a reset read on a sensor
corner that follows a signal read on the opposite corner (the previous frame's last pixel), or
at the first corner reset of the file; it is complete when it has W*H reset and W*H signal
reads. Anything else (a file starting mid-frame, dropped reads, region-of-interest frames) is
counted in `counts.aps_incomplete` and not delivered. Frame.t_us is the start of exposure (the
last reset read in global-shutter mode, the first in rolling-shutter mode, told apart by whether
all resets came before the first signal read); exposure_us runs to the first signal read.

Time. Timestamps are 32-bit microsecond counters (`# Timestamps tick is N us` scales them). They
are unwrapped to int64: a step taken modulo 2^32 that is forward (less than 2^31) is a wrap
when the raw value went down (counted in `counts.wraps`); a step back by 1 s or more is a
timestamp reset (the camera's counter restarted): time continues from the last value, a
TIMESTAMP_RESET trigger (type 0) marks it, and `counts.resets` counts it. Smaller steps back
are passed on as they are, so the bad_events policy decides (with a byte offset in the error).

Truncation. A trailing partial record, or an IMU sample cut short at the end of the file (as in
real recordings whose capture stopped mid-sample) is dropped, logged once, and described in
`truncated_note`; everything before it is delivered. An APS frame cut short is noted likewise.

Bad input raises a one-line SourceError naming the file and the byte offset: no magic, AEDAT
3.x, a header with no records, and (under bad_events="error") records whose pixel lies outside
the sensor or whose time goes backwards.

Packets hold at most `chunk_records` records' worth of data (default 2^20: <= 1 Mi events).
The decode is vectorised numpy (APS frame assembly is a numba state machine in
aps_frames.py).

`Aedat2Writer` streams packets into a valid jAER file (DAVIS or DVS128 layout; `evstream
convert` / `record` through sources/writers.py) and `write_aedat2(path, events, width, height,
chip=..., imu=None, frames=None)` writes arrays through it; this reader reads them back exactly
(IMU values to the full scale's resolution): times are stored modulo 2^32.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, asdict

import numpy as np

from evstream.errors import EvstreamError, SourceError
from evstream.sources import register_reader
from evstream.sources.aps_frames import ApsAssembler
from evstream.sources.base import EventSource
from evstream.sources.stream_writer import NAMES, Held, StreamWriter
from evstream.types import EVENT_DTYPE, IMU_DTYPE, TRIGGER_DTYPE, Frame, Packet

log = logging.getLogger(__name__)

MAGIC = b"#!AER-DAT"
_MAX_HEADER_LINE = 1 << 20          # a longer '#' line is not a header line
_RESET_BACKJUMP_US = 1_000_000      # a step back this large is a timestamp reset
_TEXT_BAD = re.compile(rb"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")

# dv-processing TriggerType values
TRIG_TIMESTAMP_RESET, TRIG_RISING, TRIG_FALLING, TRIG_PULSE = 0, 1, 2, 3

DAVIS, DVS128 = "davis", "dvs128"

# MPU-6150 sensitivities (datasheet), keyed by full scale
_ACCEL_LSB_PER_G = {2: 16384.0, 4: 8192.0, 8: 4096.0, 16: 2048.0}
_GYRO_LSB_PER_DPS = {250: 131.0, 500: 65.5, 1000: 32.8, 2000: 16.4}
_DEFAULT_ACCEL_G, _DEFAULT_GYRO_DPS = 8, 1000      # jAER ImuControl defaults for DAVIS


@dataclass(frozen=True)
class Chip:
    name: str          # jAER class simple name
    layout: str        # DAVIS or DVS128
    width: int         # 0 when unknown
    height: int
    jaer_class: str = ""


# jAER chip classes whose geometry and address layout were checked in jAER's sources
_CHIPS = {
    "davis240a": Chip("DAVIS240A", DAVIS, 240, 180, "eu.seebetter.ini.chips.davis.DAVIS240A"),
    "davis240b": Chip("DAVIS240B", DAVIS, 240, 180, "eu.seebetter.ini.chips.davis.DAVIS240B"),
    "davis240c": Chip("DAVIS240C", DAVIS, 240, 180, "eu.seebetter.ini.chips.davis.DAVIS240C"),
    "dvs240": Chip("DVS240", DAVIS, 240, 180, "eu.seebetter.ini.chips.davis.DVS240"),
    "davis346b": Chip("Davis346B", DAVIS, 346, 260, "eu.seebetter.ini.chips.davis.Davis346B"),
    "davis128": Chip("Davis128", DAVIS, 128, 128, "eu.seebetter.ini.chips.davis.Davis128"),
    "davis640": Chip("Davis640", DAVIS, 640, 480, "eu.seebetter.ini.chips.davis.Davis640"),
    "dvs128": Chip("DVS128", DVS128, 128, 128, "ch.unizh.ini.jaer.chip.retina.DVS128"),
    "tmpdiff128": Chip("Tmpdiff128", DVS128, 128, 128, "ch.unizh.ini.jaer.chip.retina.Tmpdiff128"),
}
_WRITER_ALIASES = {"davis240": "davis240c", "davis346": "davis346b"}


def chip_from_class(jaer_class: str) -> Chip | None:
    """jAER chip class (full or simple name) -> Chip; None when the layout is unknown."""
    simple = jaer_class.strip().rsplit(".", 1)[-1]
    key = simple.lower()
    if key in _CHIPS:
        return _CHIPS[key]
    if key.startswith("davis346"):                 # Davis346blue, red, cBSI, mini, Zynq, BColor
        return Chip(simple, DAVIS, 346, 260, jaer_class)
    if "dvs128" in key or "tmpdiff128" in key:      # eDVS128, DVS128Phidget, ...
        return Chip(simple, DVS128, 128, 128, jaer_class)
    if "davis" in key:                              # other DAVIS: layout known, size inferred
        return Chip(simple, DAVIS, 0, 0, jaer_class)
    return None


# -- header ------------------------------------------------------------------------------------

@dataclass
class Header:
    version: float
    lines: list[str]
    data_offset: int
    chip_class: str = ""
    hardware: str = ""
    tick_us: float = 1.0
    accel_g: int = _DEFAULT_ACCEL_G
    gyro_dps: int = _DEFAULT_GYRO_DPS
    imu_scale_source: str = "jAER defaults"


def is_aedat2(path) -> bool:
    """True when the file starts with jAER's `#!AER-DAT` magic (any version)."""
    try:
        with open(path, "rb") as f:
            return f.read(len(MAGIC)) == MAGIC
    except OSError:
        return False


def read_header(f, path: str) -> Header:
    """Parse the '#' header of an open binary file (see the module essay for where it ends)."""
    f.seek(0)
    if f.read(len(MAGIC)) != MAGIC:
        f.seek(0)
        raise SourceError(f"{path}: not a jAER AEDAT file: it does not start with '#!AER-DAT' "
                          f"(first bytes {f.read(12)!r})")
    f.seek(0)
    lines: list[str] = []
    pos = 0
    while True:
        raw = f.readline(_MAX_HEADER_LINE)
        if not raw.startswith(b"#") or not raw.endswith(b"\n") and len(raw) == _MAX_HEADER_LINE:
            break
        body = raw.rstrip(b"\r\n")
        if _TEXT_BAD.search(body):
            break
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            break
        lines.append(text)
        pos += len(raw)
        if text.lstrip("#").strip().lower() == "end of ascii header":
            break
    data_offset = pos
    first = lines[0] if lines else ""
    m = re.match(r"#!AER-DAT(\d+(?:\.\d+)?)", first)
    if not m:
        raise SourceError(f"{path}: bad AEDAT version line {first[:40]!r}")
    version = float(m.group(1))
    if version >= 4:
        raise SourceError(f"{path}: is AEDAT {m.group(1)}, not jAER AEDAT 2.0; rename it to "
                          f".aedat4 (dv-processing opens AEDAT 4 files only under that suffix)")
    if version >= 3:
        raise SourceError(f"{path}: AEDAT {m.group(1)} is not jAER AEDAT 2.0 (it is the cAER "
                          f"AEDAT 3 format, which evstream does not read; convert it with DV)")
    if version < 1:
        raise SourceError(f"{path}: unknown AEDAT version {m.group(1)}")
    h = Header(version=version, lines=lines, data_offset=data_offset)
    _parse_header_lines(h)
    return h


def _parse_header_lines(h: Header) -> None:
    accel = gyro = None
    accel_cfg = gyro_cfg = None
    for line in h.lines:
        if m := re.match(r"#\s*AEChip:\s*(\S+)", line):
            h.chip_class = m.group(1)
        elif m := re.match(r"#\s*HardwareInterface:\s*(.*)", line):
            h.hardware = m.group(1).strip()
        elif m := re.match(r"#\s*Timestamps tick\s*(?:is|:)\s*([\d.]+)\s*us", line):
            h.tick_us = float(m.group(1))
        elif "IMU" in line or "Imu" in line or "imu" in line:
            if m := re.search(r'value="ImuAccelScaleG(\d+)"', line):
                accel = int(m.group(1))
            elif m := re.search(r'value="GyroFullScaleDegPerSec(\d+)"', line):
                gyro = int(m.group(1))
            elif m := re.search(r'key="[^"]*imu4_ACCEL_CONFIG" value="(\d+)"', line):
                accel_cfg = (2, 4, 8, 16)[(int(m.group(1)) >> 3) & 3]
            elif m := re.search(r'key="[^"]*imu3_GYRO_CONFIG" value="(\d+)"', line):
                gyro_cfg = (250, 500, 1000, 2000)[(int(m.group(1)) >> 3) & 3]
    if accel in _ACCEL_LSB_PER_G and gyro in _GYRO_LSB_PER_DPS:
        h.accel_g, h.gyro_dps, h.imu_scale_source = accel, gyro, "header ImuAccelScale/ImuGyroScale"
    elif accel_cfg is not None and gyro_cfg is not None:
        h.accel_g, h.gyro_dps, h.imu_scale_source = accel_cfg, gyro_cfg, "header IMU registers"
    if h.tick_us <= 0:
        h.tick_us = 1.0


# -- decoding ----------------------------------------------------------------------------------

@dataclass
class Aedat2Counts:
    records: int = 0
    dvs: int = 0                 # DVS records decoded as events
    imu_samples: int = 0
    imu_orphans: int = 0         # IMU words not part of a complete 7-word sample
    aps_frames: int = 0
    aps_incomplete: int = 0      # frames started but not delivered
    aps_ignored: int = 0         # APS words outside any frame (or third reads)
    triggers: int = 0            # external input / sync events
    wraps: int = 0               # 32-bit timestamp wraps
    resets: int = 0              # timestamp resets (time continued from the last value)

    def as_dict(self) -> dict:
        return asdict(self)


class _TimeUnwrapper:
    """Raw uint32 ticks -> monotonic int64 us (see the module essay). Keeps state across chunks."""

    def __init__(self, tick_us: float):
        self.tick_us = tick_us
        self.prev_raw = None
        self.last_t = 0

    def __call__(self, raw: np.ndarray, counts: Aedat2Counts, reset_pos: list) -> np.ndarray:
        raw = raw.astype(np.int64)
        if self.prev_raw is None:
            self.prev_raw = int(raw[0])
            self.last_t = int(raw[0])
        if raw[0] >= self.prev_raw and not (raw[1:] < raw[:-1]).any():   # the common case
            t = raw + (self.last_t - self.prev_raw)
            self.prev_raw = int(raw[-1])
            self.last_t = int(t[-1])
            return t if self.tick_us == 1.0 else np.round(t * self.tick_us).astype(np.int64)
        d = np.diff(raw, prepend=self.prev_raw)
        wrapped = d < -(1 << 31)
        d = (d + (1 << 31)) % (1 << 32) - (1 << 31)       # the step, modulo 2^32, signed
        counts.wraps += int(np.count_nonzero(wrapped & (d >= 0)))
        resets = d <= -int(_RESET_BACKJUMP_US / self.tick_us)
        if resets.any():
            idx = np.flatnonzero(resets)
            counts.resets += len(idx)
            reset_pos.extend(idx.tolist())
            d[idx] = 0
        t = self.last_t + np.cumsum(d)
        self.prev_raw = int(raw[-1])
        self.last_t = int(t[-1])
        if self.tick_us != 1.0:
            return np.round(t * self.tick_us).astype(np.int64)
        return t


def _imu_groups(addr: np.ndarray, is_imu: np.ndarray):
    """Start indices of complete 7-word IMU samples, number of orphan words, and the start of an
    incomplete sample that runs to the end of the chunk (or -1)."""
    n = len(addr)
    tail = -1
    for m in range(6, 0, -1):          # last m records = codes 0..m-1, all IMU
        if n >= m and is_imu[n - m:].all() and np.array_equal(
                (addr[n - m:] >> 28) & 7, np.arange(m, dtype=addr.dtype)):
            tail = n - m
            break
    end = n if tail < 0 else tail
    pos = np.flatnonzero(is_imu[:end])
    codes = (addr[pos] >> 28) & 7
    k = np.flatnonzero(codes[: max(len(pos) - 6, 0)] == 0)
    ok = np.ones(len(k), bool)
    for j in range(1, 7):
        ok &= (pos[k + j] == pos[k] + j) & (codes[k + j] == j)
    starts = pos[k[ok]]
    return starts, len(pos) - 7 * len(starts), tail


class Aedat2Source(EventSource):
    """A jAER AEDAT 1.0 / 2.0 recording (see the module essay)."""

    def __init__(self, path, *, width=None, height=None, bad_events=None, filters=None,
                 flip_y: bool = True, layout: str | None = None, chunk_records: int = 1 << 20):
        self.name = os.fspath(path)
        self.live = False
        super().__init__(bad_events=bad_events, filters=filters)
        if int(chunk_records) < 7:
            raise SourceError(f"{self.name}: chunk_records must be at least 7")
        self.flip_y = bool(flip_y)
        self.chunk_records = int(chunk_records)
        self.counts = Aedat2Counts()
        self.truncated_note = ""
        self._open_file()
        try:
            self._setup(width, height, layout)
        except BaseException:
            self._f.close()
            raise

    # -- opening -----------------------------------------------------------------------------
    def _setup(self, width, height, layout) -> None:
        path = self.name
        self.header = h = read_header(self._f, path)
        size = os.fstat(self._f.fileno()).st_size
        self._rec = np.dtype([("a", ">u4"), ("t", ">u4")]) if h.version >= 2 else np.dtype(
            [("a", ">u2"), ("t", ">u4")])
        nbytes = size - h.data_offset
        self.n_records = nbytes // self._rec.itemsize
        self._tail_bytes = nbytes % self._rec.itemsize
        if self.n_records == 0:
            raise SourceError(f"{path}: header only, no event records (the header ends at byte "
                              f"offset {h.data_offset}, file size {size})")
        chip = chip_from_class(h.chip_class) if h.chip_class else None
        if layout is not None:
            if layout not in (DAVIS, DVS128):
                raise SourceError(f"{path}: layout must be 'davis' or 'dvs128', not {layout!r}")
        elif chip is not None:
            layout = chip.layout
        else:
            layout = DVS128 if h.version < 2 else self._guess_layout()
        self.layout = layout
        self.camera = chip.name if chip else (h.chip_class.rsplit(".", 1)[-1] or "unknown")
        if chip is not None and chip.layout == layout and chip.width:
            self._geom = (chip.width, chip.height)     # what the coordinate flips use
        else:
            self._geom = self._infer_geometry(width, height)
        gw, gh = self._geom
        self.width = int(width) if width is not None else gw
        self.height = int(height) if height is not None else gh
        if (width is not None or height is not None) and chip is not None and chip.width:
            if (self.width, self.height) != (chip.width, chip.height):
                self.resolution_note = (f"resolution {self.width}x{self.height} from options "
                                        f"({chip.name} is {chip.width}x{chip.height})")
        self._accel_lsb = _ACCEL_LSB_PER_G[h.accel_g]
        self._gyro_lsb = _GYRO_LSB_PER_DPS[h.gyro_dps]

    def _scan(self):
        """Yield (addr uint32, first record index) over the whole file (for inference)."""
        self._f.seek(self.header.data_offset)
        done = 0
        while done < self.n_records:
            n = min(self.chunk_records * 4, self.n_records - done)
            rec = np.fromfile(self._f, dtype=self._rec, count=n)
            yield rec["a"].astype(np.uint32), done
            done += n

    def _guess_layout(self) -> str:
        self._f.seek(self.header.data_offset)
        rec = np.fromfile(self._f, dtype=self._rec, count=min(self.n_records, 1 << 16))
        return DAVIS if int(rec["a"].max()) >= (1 << 16) else DVS128

    def _infer_geometry(self, width, height) -> tuple[int, int]:
        """Geometry for the flips when the chip does not say: options, else max x/y + 1."""
        if width is not None and height is not None:
            return int(width), int(height)
        mx = my = -1
        for a, _ in self._scan():
            if self.layout == DAVIS:
                dvs = a[(a >> 31) == 0]
                dvs = dvs[(dvs & 0x400) == 0]
                xs, ys = (dvs >> 12) & 0x3FF, (dvs >> 22) & 0x1FF
            else:
                dvs = a[(a & 0x80008000) == 0]
                xs, ys = (dvs >> 1) & 0x7F, (dvs >> 8) & 0x7F
            if len(dvs):
                mx, my = max(mx, int(xs.max())), max(my, int(ys.max()))
        if mx < 0:
            raise SourceError(f"{self.name}: no DVS events to infer the resolution from "
                              f"(chip {self.header.chip_class or 'not named'}); pass width/height")
        w = int(width) if width is not None else mx + 1
        hgt = int(height) if height is not None else my + 1
        self.resolution_note = (f"inferred {w}x{hgt} from the data (chip "
                                f"{self.header.chip_class or 'not named in the header'} has no "
                                f"known size); pass --width/--height")
        return w, hgt

    # -- reading -----------------------------------------------------------------------------
    def _read(self):
        h = self.header
        f = self._f
        f.seek(h.data_offset)
        unwrap = _TimeUnwrapper(h.tick_us)
        gw, gh = self._geom
        self._aps = None
        carry_a = np.zeros(0, np.uint32)
        carry_t = np.zeros(0, np.int64)
        done = 0
        while done < self.n_records:
            n = min(self.chunk_records, self.n_records - done)
            rec = np.fromfile(f, dtype=self._rec, count=n)
            if len(rec) != n:
                raise SourceError(f"{self.name}: file shrank while reading (byte offset "
                                  f"{h.data_offset + (done + len(rec)) * self._rec.itemsize})")
            self.counts.records += n
            reset_pos: list = []
            t = unwrap(rec["t"], self.counts, reset_pos)
            a = rec["a"].astype(np.uint32)
            first = done - len(carry_a)           # record index of a[0]
            if len(carry_a):
                a = np.concatenate((carry_a, a))
                t = np.concatenate((carry_t, t))
                reset_pos = [p + len(carry_a) for p in reset_pos]
            done += n
            self._chunk_addr = a
            if self.layout == DAVIS:
                pkt, keep_from = self._decode_davis(a, t, first, gw, gh)
            else:
                pkt, keep_from = self._decode_dvs128(a, t, first, gw, gh), len(a)
            if reset_pos:
                tr = np.zeros(len(reset_pos), TRIGGER_DTYPE)
                tr["t"] = t[reset_pos]
                tr["type"] = TRIG_TIMESTAMP_RESET
                pkt.triggers = _merge_triggers(pkt.triggers, tr)
                log.warning("%s: %d timestamp reset(s); time continues from the last value",
                            self.name, len(reset_pos))
            carry_a, carry_t = a[keep_from:], t[keep_from:]
            yield pkt
        notes = []
        if len(carry_a):
            off = h.data_offset + (self.n_records - len(carry_a)) * self._rec.itemsize
            notes.append(f"the last IMU sample has {len(carry_a)} of 7 words (cut at byte offset "
                         f"{off}); dropped")
        if self._tail_bytes:
            off = h.data_offset + self.n_records * self._rec.itemsize
            notes.append(f"{self._tail_bytes} trailing bytes at byte offset {off} are a partial "
                         f"{self._rec.itemsize}-byte record; ignored")
        aps = self._aps
        if aps is not None:
            if aps.active:
                notes.append(f"the last APS frame is incomplete ({aps.n_reset} reset and "
                             f"{aps.n_signal} signal reads of {gw * gh}); dropped")
                self.counts.aps_incomplete += 1
            self.counts.aps_incomplete += aps.incomplete
            self.counts.aps_ignored += aps.ignored
        if notes:
            self.truncated_note = "; ".join(notes)
            log.warning("%s: recording is truncated: %s", self.name, self.truncated_note)

    def _decode_davis(self, a, t, first, gw, gh):
        is_dvs = a < 0x80000000
        b10 = (a & 0x80000400) == 0x400
        special = b10 & ((a & 0x7FFFF800) == 0) if b10.any() else None
        if special is None and is_dvs.all():
            ev_mask, ae, te = None, a, t
        else:
            ev_mask = is_dvs if special is None else is_dvs & ~special
            ae, te = a[ev_mask], t[ev_mask]
        # uint32 arithmetic: a raw address beyond the chip wraps to a huge x/y, which the
        # sensor check then reports (or drops)
        x = np.uint32(gw - 1) - ((ae >> 12) & 0x3FF)
        y = np.uint32(gh - 1) - (ae >> 22) if self.flip_y else ae >> 22
        pkt = Packet(events=self._events(te, x, y, (ae >> 11) & 1, ev_mask, first))
        if special is not None and special.any():
            code = a[special] & 0x3FF
            tr = np.zeros(int(special.sum()), TRIGGER_DTYPE)
            tr["t"] = t[special]
            tr["type"] = np.where(code == 3, TRIG_RISING, np.where(code == 2, TRIG_FALLING,
                                                                   TRIG_PULSE))
            pkt.triggers = tr
            self.counts.triggers += len(tr)
        keep_from = len(a)
        if ev_mask is None:
            return pkt, keep_from
        is_imu = (a & 0x80000C00) == 0x80000C00
        if is_imu.any():
            starts, orphans, tail = _imu_groups(a, is_imu)
            self.counts.imu_orphans += orphans
            if tail >= 0:
                keep_from = tail
            pkt.imu = self._imu(a, t, starts)
            self.counts.imu_samples += len(starts)
        is_aps = ~is_dvs & ~is_imu
        if is_aps.any():
            if self._aps is None:
                self._aps = ApsAssembler(gw, gh, self.flip_y)
            pkt.frames = self._aps.feed(a[is_aps], t[is_aps])
            self.counts.aps_frames += len(pkt.frames)
        return pkt, keep_from

    def _decode_dvs128(self, a, t, first, gw, gh):
        special = (a & 0x80008000) != 0
        if special.any():
            ev_mask = ~special
            ae, te = a[ev_mask], t[ev_mask]
        else:
            ev_mask, ae, te = None, a, t
        x = np.uint32(gw - 1) - ((ae >> 1) & 0x7F)
        yr = (ae >> 8) & 0x7F
        y = np.uint32(gh - 1) - yr if self.flip_y else yr
        pkt = Packet(events=self._events(te, x, y, 1 - (ae & 1), ev_mask, first))
        if ev_mask is not None:
            tr = np.zeros(int(special.sum()), TRIGGER_DTYPE)
            tr["t"] = t[special]
            tr["type"] = TRIG_FALLING
            pkt.triggers = tr
            self.counts.triggers += len(tr)
        return pkt

    def _events(self, t, x, y, p, ev_mask, first) -> np.ndarray:
        ev = np.empty(len(t), EVENT_DTYPE)
        ev["t"] = t
        ev["x"] = x
        ev["y"] = y
        ev["p"] = p
        self.counts.dvs += len(t)
        self._where = (first, ev_mask, self._chunk_addr)   # to locate a bad event
        return ev

    def locate(self, i: int) -> str:
        """The byte offset and raw address of event i's record in the latest packet."""
        first, ev_mask, addr = self._where
        j = i if ev_mask is None else int(np.flatnonzero(ev_mask)[i])
        off = self.header.data_offset + (first + j) * self._rec.itemsize
        return f"byte offset {off} (address 0x{int(addr[j]):08x})"

    def _imu(self, a, t, starts) -> np.ndarray:
        out = np.zeros(len(starts), IMU_DTYPE)
        if not len(starts):
            return out
        words = a[starts[:, None] + np.arange(7)]
        v = ((words >> 12) & 0xFFFF).astype(np.uint16).view(np.int16).astype(np.float64)
        out["t"] = t[starts]
        out["accel"] = np.stack((-v[:, 0], v[:, 1], v[:, 2]), 1) / self._accel_lsb
        out["temperature"] = v[:, 3] / 340.0 + 35.0
        out["gyro"] = np.stack((-v[:, 4], v[:, 5], -v[:, 6]), 1) / self._gyro_lsb
        return out

    def describe(self) -> dict:
        d = super().describe()
        d.update(format=f"jAER AEDAT {self.header.version:.1f}", layout=self.layout,
                 chip_class=self.header.chip_class, hardware=self.header.hardware,
                 imu_scale=f"{self.header.accel_g} g, {self.header.gyro_dps} deg/s "
                           f"({self.header.imu_scale_source})",
                 truncated_note=self.truncated_note, counts=self.counts.as_dict())
        return d


def _merge_triggers(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    out = np.concatenate((a, b))
    return out[np.argsort(out["t"], kind="stable")]


def open_aedat2(path, *, width=None, height=None, bad_events=None, filters=None,
                flip_y: bool = True, layout: str | None = None,
                chunk_records: int = 1 << 20) -> Aedat2Source:
    """Open a jAER AEDAT 1.0/2.0 file (also used for jAER `.dat` files by the Prophesee reader)."""
    return Aedat2Source(path, width=width, height=height, bad_events=bad_events, filters=filters,
                        flip_y=flip_y, layout=layout, chunk_records=chunk_records)


register_reader((".aedat", ".aedat2"), open_aedat2)


# -- writer ------------------------------------------------------------------------------------

_AEDAT2_RECORD = np.dtype([("a", ">u4"), ("t", ">u4")])
_CHIP_BY_SIZE = {(240, 180): "davis240c", (346, 260): "davis346b", (640, 480): "davis640"}


def chip_for(width: int, height: int, side: bool = False) -> str | None:
    """The jAER chip a width x height sensor is written as (128x128: DVS128, or Davis128 when
    the recording has frames or IMU samples); None when no chip here has that size."""
    if (width, height) == (128, 128):
        return "davis128" if side else "dvs128"
    return _CHIP_BY_SIZE.get((width, height))


class Aedat2Writer(StreamWriter):
    """Stream a jAER AEDAT 2.0 file (stream_writer.StreamWriter's interface).

    The chip comes from `chip` or the sensor size (chip_for: 240x180 DAVIS240C, 346x260
    Davis346B, 640x480 Davis640, 128x128 DVS128 or Davis128); another size is a one-line error,
    since jAER's layouts flip x by the chip's width and nothing else in the file gives it.
    What it holds (DAVIS layout): events; IMU samples (7 words each, quantised to the
    accel_g / gyro_dps full scales written in the header; a value beyond them is clipped and
    counted in `imu_clipped`); APS frames that are uint8 (H, W) images of the sensor's size
    (global-shutter reset/signal reads: resets at t_us, signal reads at t_us + exposure_us;
    other frames are dropped and counted); triggers of dv TriggerType 1/2/3 (external input
    rising/falling/pulse; others are dropped and counted). DVS128 layout: events and type-2
    triggers (its external sync) only. The file is ONE time-ordered stream of 32-bit-time
    records: side records later than the last event written are held until the events pass
    them (or close()), and one earlier than what was written is dropped and counted. The first
    time must be below 2^32 us and steps between events below 2^31 us (the reader unwraps the
    32-bit time by them): otherwise a one-line error. Header at once, records at every write():
    a killed writer leaves a file read up to its last whole record (and held side records are
    lost).
    """

    format_name = "AEDAT 2.0"
    suffixes = (".aedat", ".aedat2")
    carries = ("events", "frames", "imu", "triggers")

    def __init__(self, path, *, width, height, chip: str | None = None,
                 accel_g: int = _DEFAULT_ACCEL_G, gyro_dps: int = _DEFAULT_GYRO_DPS, **kw):
        super().__init__(path, width=width, height=height, **kw)
        key = _WRITER_ALIASES.get(chip.lower(), chip.lower()) if chip else \
            chip_for(self.width, self.height, self.has["frames"] or self.has["imu"])
        if key is None:
            sizes = ", ".join(f"{c.width}x{c.height} {c.name}" for c in _CHIPS.values()
                              if c.name in ("DAVIS240C", "Davis346B", "Davis640", "DVS128"))
            raise EvstreamError(f"{self.path}: AEDAT 2.0 is written for jAER's chips ({sizes}); "
                                f"this sensor is {self.width}x{self.height}")
        if key not in _CHIPS:
            raise EvstreamError(f"{self.path}: unknown chip {chip!r}; one of "
                                f"{sorted(set(_CHIPS) | set(_WRITER_ALIASES))}")
        c = self.chip = _CHIPS[key]
        if (self.width, self.height) != (c.width, c.height):
            raise EvstreamError(f"{self.path}: {c.name} is {c.width}x{c.height}, not "
                                f"{self.width}x{self.height}")
        if accel_g not in _ACCEL_LSB_PER_G or gyro_dps not in _GYRO_LSB_PER_DPS:
            raise ValueError(f"accel_g in {sorted(_ACCEL_LSB_PER_G)}, gyro_dps in "
                             f"{sorted(_GYRO_LSB_PER_DPS)}")
        self.accel_g, self.gyro_dps = accel_g, gyro_dps
        if c.layout == DVS128:
            self.carries = ("events", "triggers")
            self.cannot = {k: f"the DVS128 layout has no {NAMES[k]}" for k in ("frames", "imu")}
        self.records = 0
        self.imu_clipped = 0
        self._held = Held(np.uint32)
        self._last_out = -1
        self._f = self._create()
        self._f.write(_aedat2_header(c, accel_g, gyro_dps))
        self._sync()

    def _check_more(self, ev) -> None:
        t = ev["t"]
        if self.t_last_us is None and int(t[0]) >= 1 << 32:
            raise self._bad_event(ev, 0, "is later than AEDAT 2.0's first time can be "
                                  "(2^32 us); start times at 0 (--time zero)")
        prev = t[0] if self.t_last_us is None else self.t_last_us
        gap = np.flatnonzero(np.diff(t, prepend=prev) >= 1 << 31)
        if len(gap):
            raise self._bad_event(ev, int(gap[0]), "comes 2^31 us or more after the event "
                                  "before it: AEDAT 2.0's 32-bit time cannot hold the gap")

    def _late(self, stream: str, t: np.ndarray) -> np.ndarray:
        """Mask of side items that can still be written (not before what was written)."""
        ok = t >= self._last_out
        self._drop(stream, len(t) - int(ok.sum()), "came after later events (AEDAT 2.0 is one "
                   "time-ordered stream of records)")
        return ok

    def _write(self, events, frames, imu, triggers):
        c = self.chip
        if len(imu):
            imu = imu[self._late("imu", imu["t"])]
            if len(imu):
                a, t, clipped = _encode_imu(imu, self.accel_g, self.gyro_dps, clip=True)
                self.imu_clipped += clipped
                self._held.add(t, a)
                self.counts["imu"] += len(imu)
        for fr in frames:
            img = np.asarray(fr.image)
            if img.shape != (self.height, self.width) or img.dtype != np.uint8:
                self._drop("frames", 1, f"AEDAT 2.0 frames are uint8 {self.height}x"
                           f"{self.width} images (APS reads at the sensor's pixels)")
            elif self._late("frames", np.array([fr.t_us])).all():
                a, t = _encode_frame(fr, self.width, self.height)
                self._held.add(t, a)
                self.counts["frames"] += 1
        if len(triggers):
            codes = _TRIGGER_WORDS[c.layout]
            ok = np.isin(triggers["type"], list(codes))
            self._drop("triggers", len(ok) - int(ok.sum()),
                       f"{c.name}'s external input has dv TriggerType "
                       f"{'/'.join(map(str, codes))} only")
            tr = triggers[ok]
            tr = tr[self._late("triggers", tr["t"])]
            if len(tr):
                a = np.array([codes[int(k)] for k in tr["type"]], np.uint32)
                order = np.argsort(tr["t"], kind="stable")
                self._held.add(tr["t"][order], a[order])
                self.counts["triggers"] += len(tr)
        t_side, a_side = self._held.take(int(events["t"][-1]) if len(events) else -1)
        self._records(events, t_side, a_side)

    def _records(self, ev, t_side, a_side) -> None:
        if not len(ev) and not len(t_side):
            return
        c = self.chip
        x, y = ev["x"].astype(np.uint32), ev["y"].astype(np.uint32)
        p = (ev["p"] > 0).astype(np.uint32)
        if c.layout == DAVIS:
            a = ((c.height - 1 - y) << 22) | ((c.width - 1 - x) << 12) | (p << 11)
        else:
            a = ((c.height - 1 - y) << 8) | ((c.width - 1 - x) << 1) | (1 - p)
        t = ev["t"].astype(np.int64)
        if len(t_side):
            a, t = np.concatenate((a, a_side)), np.concatenate((t, t_side))
            order = np.argsort(t, kind="stable")      # keeps IMU words and frame reads together
            a, t = a[order], t[order]
        rec = np.empty(len(a), _AEDAT2_RECORD)
        rec["a"] = a
        rec["t"] = (t & 0xFFFFFFFF).astype(np.uint32)
        self._f.write(rec.tobytes())
        self._sync()
        self.records += len(rec)
        self._last_out = max(self._last_out, int(t[-1]))
        self.written["events"] += len(ev)

    def _finish(self) -> None:
        t_side, a_side = self._held.take(None)
        self._records(np.zeros(0, EVENT_DTYPE), t_side, a_side)
        for k in ("frames", "imu", "triggers"):
            self.written[k] = self.counts[k]


# dv TriggerType -> the address word of an external input event, per layout
_TRIGGER_WORDS = {DAVIS: {TRIG_RISING: 0x400 | 3, TRIG_FALLING: 0x400 | 2, TRIG_PULSE: 0x400 | 4},
                  DVS128: {TRIG_FALLING: 0x8000}}


def _aedat2_header(c: Chip, accel_g: int, gyro_dps: int) -> bytes:
    lines = ["#!AER-DAT2.0",
             "# This is a raw AE data file - do not edit",
             "# Data format is int32 address, int32 timestamp (8 bytes total), repeated for "
             "each event",
             "# Timestamps tick is 1 us",
             "# created by evstream",
             "# HardwareInterface: evstream write_aedat2",
             f"# AEChip: {c.jaer_class}"]
    if c.layout == DAVIS:
        lines += ["#Start of Preferences for this AEChip",
                  f'#  <entry key="ImuAccelScale" value="ImuAccelScaleG{accel_g}"/>',
                  f'#  <entry key="ImuGyroScale" value="GyroFullScaleDegPerSec{gyro_dps}"/>',
                  "#End of Preferences for this AEChip"]
    lines.append("#End Of ASCII Header")
    return ("\r\n".join(lines) + "\r\n").encode("ascii")


def write_aedat2(path, events: np.ndarray, width: int, height: int, chip: str = "DAVIS240C",
                 imu: np.ndarray | None = None, frames: list[Frame] | None = None,
                 accel_g: int = _DEFAULT_ACCEL_G, gyro_dps: int = _DEFAULT_GYRO_DPS) -> int:
    """Write a jAER AEDAT 2.0 file in one call (through Aedat2Writer); returns the number of
    records written.

    `events` (EVENT_DTYPE, sorted by t, inside width x height, top-left origin as evstream)
    are encoded in the chip's layout so that `open_aedat2` (default flip_y=True) reads them back
    exactly. `chip` is DAVIS240A/B/C, DVS240, DAVIS346, DAVIS128, DAVIS640 or DVS128; width and
    height must be that chip's. DAVIS chips also take `imu` (IMU_DTYPE; values are quantised to
    the accel_g / gyro_dps full scales, recorded in the header) and `frames` (uint8 (H, W)
    images, written as global-shutter reset/signal reads: all resets at t_us, all signal reads at
    t_us + exposure_us). Times are stored modulo 2^32 us (the reader unwraps them).
    """
    key = _WRITER_ALIASES.get(chip.lower(), chip.lower())
    if key not in _CHIPS:
        known = sorted(set(_CHIPS) | set(_WRITER_ALIASES))
        raise ValueError(f"unknown chip {chip!r}; one of {known}")
    c = _CHIPS[key]
    if (width, height) != (c.width, c.height):
        raise ValueError(f"{c.name} is {c.width}x{c.height}, not {width}x{height}")
    if events.dtype != EVENT_DTYPE:
        raise ValueError("events must be EVENT_DTYPE")
    if len(events):
        if np.any(np.diff(events["t"]) < 0):
            raise ValueError("events must be sorted by t")
        if int(events["x"].max()) >= width or int(events["y"].max()) >= height:
            raise ValueError(f"events outside the {width}x{height} sensor")
        if int(events["t"].min()) < 0:
            raise ValueError("negative timestamps")
    if accel_g not in _ACCEL_LSB_PER_G or gyro_dps not in _GYRO_LSB_PER_DPS:
        raise ValueError(f"accel_g in {sorted(_ACCEL_LSB_PER_G)}, gyro_dps in "
                         f"{sorted(_GYRO_LSB_PER_DPS)}")
    has_imu = imu is not None and len(imu)
    if c.layout == DVS128 and (has_imu or frames):
        raise ValueError("DVS128 recordings have no IMU or APS frames")
    if has_imu:
        _encode_imu(imu, accel_g, gyro_dps)        # values beyond the full scale: ValueError
    for fr in frames or []:
        _encode_frame(fr, width, height)           # a frame of another shape: ValueError
    with Aedat2Writer(path, width=width, height=height, chip=key, accel_g=accel_g,
                      gyro_dps=gyro_dps) as w:
        w.write(Packet(events=events, frames=list(frames or []),
                       imu=imu if has_imu else np.zeros(0, IMU_DTYPE)))
    return w.records


def _encode_imu(imu: np.ndarray, accel_g: int, gyro_dps: int, clip: bool = False):
    """IMU samples -> (7 address words each, their times[, values clipped]); beyond the full
    scale: ValueError, or with clip=True clipped and counted."""
    al, gl = _ACCEL_LSB_PER_G[accel_g], _GYRO_LSB_PER_DPS[gyro_dps]
    raw = np.empty((len(imu), 7), np.float64)
    acc = imu["accel"].astype(np.float64)
    gyr = imu["gyro"].astype(np.float64)
    raw[:, 0], raw[:, 1], raw[:, 2] = -acc[:, 0] * al, acc[:, 1] * al, acc[:, 2] * al
    raw[:, 3] = (imu["temperature"].astype(np.float64) - 35.0) * 340.0
    raw[:, 4], raw[:, 5], raw[:, 6] = -gyr[:, 0] * gl, gyr[:, 1] * gl, -gyr[:, 2] * gl
    raw = np.round(raw)
    beyond = (raw < -32768) | (raw > 32767) | np.isnan(raw)
    if beyond.any() and not clip:
        raise ValueError(f"IMU values beyond the {accel_g} g / {gyro_dps} deg/s full scale")
    raw = np.clip(np.nan_to_num(raw), -32768, 32767)
    v = raw.astype(np.int16).view(np.uint16).astype(np.uint32)
    codes = np.arange(7, dtype=np.uint32)
    a = np.uint32(0x80000C00) | (codes << 28) | (v << 12)
    t = np.repeat(imu["t"].astype(np.int64), 7)
    if clip:
        return a.reshape(-1), t, int(beyond.sum())
    return a.reshape(-1), t


def _encode_frame(fr: Frame, width: int, height: int):
    img = np.asarray(fr.image)
    if img.shape != (height, width) or img.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 ({height}, {width}) images")
    xr, yr = np.meshgrid(np.arange(width, dtype=np.uint32), np.arange(height, dtype=np.uint32),
                         indexing="ij")
    xr, yr = xr.reshape(-1), yr.reshape(-1)          # column by column, corner (0, 0) first
    val = img[height - 1 - yr, xr].astype(np.uint32) << 2
    base = np.uint32(0x80000000) | (yr << 22) | (xr << 12)
    reset = base | np.uint32(1023)
    signal = base | np.uint32(1 << 10) | (np.uint32(1023) - val)
    n = width * height
    t = np.concatenate((np.full(n, fr.t_us, np.int64),
                        np.full(n, fr.t_us + fr.exposure_us, np.int64)))
    return np.concatenate((reset, signal)), t
