"""Core data types. All times are int64 microseconds.

EVENT_DTYPE has the byte layout of dv-processing's `EventStore.numpy()` (int64 timestamp at 0,
int16 x at 8, int16 y at 10, int8 polarity at 12, itemsize 16), so a dv array becomes ours with
`.view(EVENT_DTYPE)`, without a copy. Coordinates are unsigned here: a sensor never has negative
pixels. Polarity is 1 = ON, 0 = OFF, as in AEDAT4 and dv-processing.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

EVENT_DTYPE = np.dtype(
    {"names": ["t", "x", "y", "p"], "formats": ["<i8", "<u2", "<u2", "i1"],
     "offsets": [0, 8, 10, 12], "itemsize": 16}
)

# IMU sample: accelerometer in g, gyroscope in deg/s, temperature in deg C (dv-processing units).
IMU_DTYPE = np.dtype([("t", "<i8"), ("accel", "<f4", (3,)), ("gyro", "<f4", (3,)),
                      ("temperature", "<f4")])

# Trigger: timestamp and dv-processing's TriggerType value (e.g. 6..9 = APS frame/exposure signals).
TRIGGER_DTYPE = np.dtype([("t", "<i8"), ("type", "<i1")])


def empty_events(n: int = 0) -> np.ndarray:
    return np.zeros(n, dtype=EVENT_DTYPE)


def make_events(t, x, y, p) -> np.ndarray:
    """Build an EVENT_DTYPE array from four equal-length sequences (copies)."""
    t = np.asarray(t)
    out = np.empty(t.shape[0], dtype=EVENT_DTYPE)
    out["t"] = t
    out["x"] = x
    out["y"] = y
    out["p"] = np.asarray(p) > 0  # bool, 0/1 or -1/+1 polarity -> 1 = ON, 0 = OFF
    return out


@dataclass(frozen=True)
class Frame:
    """An APS (or any intensity) frame: uint8 (H, W) or (H, W, 3)."""

    t_us: int
    image: np.ndarray
    exposure_us: int = 0


@dataclass
class Packet:
    """What a source yields: events plus whatever else arrived in the same time span.

    Any part may be empty. `events` is sorted by t and inside the declared resolution.
    """

    events: np.ndarray = field(default_factory=empty_events)
    frames: list[Frame] = field(default_factory=list)
    imu: np.ndarray = field(default_factory=lambda: np.zeros(0, IMU_DTYPE))
    triggers: np.ndarray = field(default_factory=lambda: np.zeros(0, TRIGGER_DTYPE))

    def is_empty(self) -> bool:
        return not (len(self.events) or self.frames or len(self.imu) or len(self.triggers))


@dataclass(frozen=True)
class Geometry:
    width: int
    height: int

    def __str__(self) -> str:
        return f"{self.width}x{self.height}"


def seconds_to_us(s: float) -> int:
    return int(round(s * 1_000_000))


def put_events(dst: np.ndarray, at: int, ev: np.ndarray) -> int:
    """Copy EVENT_DTYPE events into dst[at:at + len(ev)] as 8-byte words (numpy copies a padded
    structured dtype field by field: about 30 us for 1,000 events against 1 us, numpy 2.4);
    the padding bytes come as they are in ev. -> at + len(ev)."""
    w = EVENT_DTYPE.itemsize // 8
    dst.view(np.int64)[at * w:(at + len(ev)) * w] = np.ascontiguousarray(ev).view(np.int64)
    return at + len(ev)


def concat_events(batches) -> np.ndarray:
    """Concatenate event arrays into one EVENT_DTYPE array.

    numpy 2.x's `np.concatenate` of arrays with a padded structured dtype returns a packed
    13-byte dtype, not EVENT_DTYPE; copying into a preallocated array keeps the layout (and
    zeroes the padding bytes, so byte-wise comparisons hold).
    """
    batches = [b for b in batches if len(b)]
    out = np.zeros(sum(len(b) for b in batches), dtype=EVENT_DTYPE)
    i = 0
    for b in batches:
        for name in ("t", "x", "y", "p"):
            out[name][i:i + len(b)] = b[name]
        i += len(b)
    return out
