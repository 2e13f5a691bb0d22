"""Live iniVation cameras through dv-processing: `camera:MODEL[?serial=S&option=value...]`.

A thin adapter over `dv.io.camera.discover()` / `dv.io.camera.open(descriptor)`:

- MODEL is one of davis346, davis240, dvxplorer, dvxplorer-lite, dvs128, any. USB discovery only
  reports the camera family (DAVIS, DVXplorer, DVS128), so the exact model is told apart by the
  sensor resolution after opening (346x260, 240x180, 640x480, 320x240, 128x128); a camera of the
  right family but the wrong size is closed again and the next one tried.
- With no matching camera the source raises SourceError whose one line says what was looked for
  and what was found; dv's own IndexError ("no camera") never reaches the user.
- Settings (all optional; each applied right after opening):
    time_interval_us        how often the camera commits a packet (latency vs. overhead), any model
    aps (bool)              DAVIS APS frames on/off
    exposure_us             DAVIS APS exposure (turns auto-exposure off)
    sensor_noise_filter_us  the camera's own background-activity filter. In dv-processing 2.0.4
                            only DAVIS cameras have one (FPGA, 250 us steps); DVXplorer / DVS128
                            bindings have none.
  A setting the model lacks is a one-line SourceError naming the camera, except a request to
  turn off what is not there (aps=False on a DVXplorer), which is a no-op.
- Reading: events, frames, IMU and triggers that are ready together become one Packet; events
  go through `self.dv_events(store)` (noise filters on the dv EventStore, zero-copy view).
  When nothing is ready the reader naps `idle_s` (0.5 ms) instead of spinning.
- A camera that stops (unplugged: isRunning() false, or a read raising) ends the source cleanly:
  what was already buffered is delivered, iteration stops, `end_reason` holds the message and a
  warning is logged; never a traceback.
- For tests, `discover` and `open` can be injected (defaults: dv's).

The dv -> evstream converters for frames, IMU and triggers live here too (network.py uses them).
"""

from __future__ import annotations

import logging
import re
import time
from datetime import timedelta
from typing import Callable, Iterator
from urllib.parse import parse_qsl

import numpy as np

from evstream.errors import SourceError
from evstream.sources import register_scheme
from evstream.sources.base import EventSource
from evstream.types import IMU_DTYPE, TRIGGER_DTYPE, Frame, Packet

log = logging.getLogger(__name__)

# model -> (families dv's discovery reports for it, sensor resolution or None = any)
MODELS: dict[str, tuple[tuple[str, ...], tuple[int, int] | None]] = {
    "davis346": (("DAVIS", "DAVIS_GEN2"), (346, 260)),
    "davis240": (("DAVIS", "DAVIS_GEN2"), (240, 180)),
    "dvxplorer": (("DVXPLORER", "DVXPLORER_S", "DVXPLORER_M", "DVXPLORER_GEN2"), (640, 480)),
    "dvxplorer-lite": (("DVXPLORER", "DVXPLORER_S", "DVXPLORER_M", "DVXPLORER_GEN2"),
                       (320, 240)),
    "dvs128": (("DVS128",), (128, 128)),
    "any": ((), None),
}

BA_FILTER_STEP_US = 250          # DAVIS FPGA background-activity filter time unit
MAX_TIME_INTERVAL_US = 1_000_000


# -- dv -> evstream conversions ----------------------------------------------------------------

def frame_from_dv(frame) -> Frame:
    exposure = frame.exposure
    exposure_us = int(exposure / timedelta(microseconds=1)) if isinstance(exposure, timedelta) \
        else int(exposure or 0)
    return Frame(t_us=int(frame.timestamp), image=np.asarray(frame.image),
                 exposure_us=exposure_us)


def imu_from_dv(samples) -> np.ndarray:
    out = np.zeros(len(samples), dtype=IMU_DTYPE)
    for i, s in enumerate(samples):
        out[i] = (s.timestamp, (s.accelerometerX, s.accelerometerY, s.accelerometerZ),
                  (s.gyroscopeX, s.gyroscopeY, s.gyroscopeZ), s.temperature)
    return out


def triggers_from_dv(triggers) -> np.ndarray:
    out = np.zeros(len(triggers), dtype=TRIGGER_DTYPE)
    for i, tr in enumerate(triggers):
        out[i] = (tr.timestamp, int(tr.type))
    return out


# -- settings -----------------------------------------------------------------------------------

def _positive_us(name: str, value, limit: int | None = None) -> int | None:
    if value is None:
        return None
    try:
        us = int(value)
    except (TypeError, ValueError):
        raise SourceError(f"{name} {value!r}: expected a whole number of microseconds") from None
    if us <= 0 or (limit is not None and us > limit):
        raise SourceError(f"{name} {value}: expected 1..{limit or 'any'} microseconds")
    return us


def _flag(name: str, value) -> bool | None:
    if value is None or isinstance(value, bool):
        return value
    s = str(value).strip().lower()
    if s in ("1", "true", "on", "yes"):
        return True
    if s in ("0", "false", "off", "no"):
        return False
    raise SourceError(f"{name} {value!r}: expected on/off")


def apply_settings(cam, label: str, *, time_interval_us=None, aps=None, exposure_us=None,
                   sensor_noise_filter_us=None) -> dict:
    """Apply the settings the user set to an opened dv camera; returns what was applied."""
    applied = {}
    name = cam.getCameraName()
    if time_interval_us is not None:
        cam.setTimeInterval(timedelta(microseconds=time_interval_us))
        applied["time_interval_us"] = time_interval_us
    has_aps = hasattr(cam, "setFramesRunning")
    if aps is not None:
        if has_aps:
            cam.setFramesRunning(bool(aps))
            applied["aps"] = bool(aps)
        elif aps:
            raise SourceError(f"{label}: {name} has no APS frames (--aps is for DAVIS cameras)")
    if exposure_us is not None:
        if not has_aps or not hasattr(cam, "setExposureDuration"):
            raise SourceError(f"{label}: {name} has no APS frames, so no exposure to set "
                              f"(--exposure-us is for DAVIS cameras)")
        if aps is False:
            raise SourceError(f"{label}: --exposure-us with --no-aps: frames are off")
        if hasattr(cam, "setAutoExposure"):
            cam.setAutoExposure(False)
        cam.setExposureDuration(timedelta(microseconds=exposure_us))
        applied["exposure_us"] = exposure_us
    if sensor_noise_filter_us is not None:
        if not hasattr(cam, "setBackgroundActivityFilter"):
            raise SourceError(f"{label}: {name} has no on-camera noise filter in dv-processing "
                              f"(--sensor-noise-filter is for DAVIS cameras; use the software "
                              f"--ba-filter-us instead)")
        steps = max(1, round(sensor_noise_filter_us / BA_FILTER_STEP_US))
        cam.setBackgroundActivityFilter(steps)
        applied["sensor_noise_filter_us"] = steps * BA_FILTER_STEP_US
        if steps * BA_FILTER_STEP_US != sensor_noise_filter_us:
            log.info("%s: on-camera noise filter set to %d us (steps of %d us)", label,
                     steps * BA_FILTER_STEP_US, BA_FILTER_STEP_US)
    return applied


# -- discovery ----------------------------------------------------------------------------------

def _family(desc) -> str:
    model = getattr(desc, "cameraModel", None)
    return getattr(model, "name", None) or str(model).rsplit(".", 1)[-1]


def _describe_device(desc) -> str:
    return f"{_family(desc)} {getattr(desc, 'serialNumber', '?')}"


def _resolution(cam) -> tuple[int, int] | None:
    res = cam.getEventResolution() if cam.isEventStreamAvailable() else None
    if res is None and cam.isFrameStreamAvailable():
        res = cam.getFrameResolution()
    return (int(res[0]), int(res[1])) if res is not None else None


def find_camera(model: str, serial: str | None, label: str, discover: Callable,
                open_: Callable):
    """Open the first camera matching model and serial, or raise a one-line SourceError."""
    families, want_res = MODELS[model]
    wanted = f"{model.upper() if model != 'any' else 'any'}"
    looked = f"looked for model {model}, serial {serial or 'any'}"
    try:
        devices = list(discover())
    except Exception as e:  # noqa: BLE001 - libusb trouble is the user's to see, in one line
        raise SourceError(f"{label}: camera discovery failed ({_one_line(e)})") from None
    found = [_describe_device(d) for d in devices]
    rejected = []
    for desc in devices:
        if families and _family(desc) not in families:
            continue
        if serial and str(getattr(desc, "serialNumber", "")) != serial:
            continue
        try:
            cam = open_(desc)
        except Exception as e:  # noqa: BLE001
            rejected.append(f"{_describe_device(desc)} could not be opened: {_one_line(e)}")
            continue
        res = _resolution(cam)
        if want_res is not None and res is not None and res != want_res:
            rejected.append(f"{_describe_device(desc)} is {res[0]}x{res[1]}")
            del cam              # a dv camera closes when its last reference goes
            continue
        return cam
    what = f"no {wanted} camera found" if model != "any" else "no camera found"
    msg = f"{label}: {what} ({looked}); devices found: {', '.join(found) or 'none'}"
    if rejected:
        msg += f" ({'; '.join(rejected)})"
    raise SourceError(msg)


_SOURCE_LOCATION = re.compile(r"^\S+\.(?:hpp|cpp|h|cc)\(\d+\):")


def _one_line(e: BaseException) -> str:
    """dv's exception text -> one readable line: skips the C++ source-location line and the
    stack trace dv 2.0.4 appends, and boost's "[system:N at /path...]" tail."""
    text = type(e).__name__
    for line in str(e).splitlines():
        line = line.strip()
        if not line or _SOURCE_LOCATION.match(line):
            continue
        if line.startswith("Stacktrace"):
            break
        text = line
        break
    text = re.sub(r"^[A-Za-z]+Error: ", "", text)
    return text.split(" [system:", 1)[0]


# -- the source ---------------------------------------------------------------------------------

class CameraSource(EventSource):
    live = True

    def __init__(self, model: str = "any", *, serial: str | None = None, spec: str | None = None,
                 time_interval_us=None, aps=None, exposure_us=None, sensor_noise_filter_us=None,
                 width: int | None = None, height: int | None = None,
                 bad_events: str | None = None, filters=None, discover: Callable | None = None,
                 open: Callable | None = None, idle_s: float = 0.0005):  # noqa: A002
        model = (model or "any").lower()
        self.name = spec or f"camera:{model}"
        if model not in MODELS:
            raise SourceError(f"{self.name}: unknown camera model {model!r} "
                              f"(known: {', '.join(MODELS)})")
        settings = dict(
            time_interval_us=_positive_us("--time-interval-us", time_interval_us,
                                          MAX_TIME_INTERVAL_US),
            aps=_flag("--aps", aps),
            exposure_us=_positive_us("--exposure-us", exposure_us, 10_000_000),
            sensor_noise_filter_us=_positive_us("--sensor-noise-filter", sensor_noise_filter_us,
                                                1_000_000))
        if discover is None or open is None:
            import dv_processing as dv

            discover = discover or dv.io.camera.discover
            open = open or dv.io.camera.open
        self._cam = find_camera(model, serial, self.name, discover, open)
        self.model = model
        self.idle_s = idle_s
        self.end_reason = ""
        self._closed = False
        try:
            self.camera = self._cam.getCameraName()
            res = _resolution(self._cam)
            if res is None:
                raise SourceError(f"{self.name}: {self.camera} reports no event or frame "
                                  f"resolution")
            self.width, self.height = res
            if (width is not None and width != self.width) or \
                    (height is not None and height != self.height):
                raise SourceError(f"{self.name}: --width/--height {width}x{height} do not match "
                                  f"the camera's {self.width}x{self.height} sensor")
            self.settings = apply_settings(self._cam, self.name, **settings)
        except BaseException:
            self.close()
            raise
        self._streams = {k: bool(getattr(self._cam, f"is{k}StreamAvailable")())
                         for k in ("Event", "Frame", "Imu", "Trigger")}
        super().__init__(bad_events=bad_events, filters=filters)

    def describe(self) -> dict:
        d = super().describe()
        d["settings"] = dict(self.settings)
        d["end_reason"] = self.end_reason
        return d

    def _end(self, why: str) -> None:
        if not self.end_reason:
            self.end_reason = f"{self.name}: {why}"
            log.warning("%s", self.end_reason)

    def _poll(self) -> Packet | None:
        """One packet of whatever is ready now, or None when nothing is."""
        cam = self._cam
        pkt = Packet()
        got = False
        if self._streams["Event"]:
            store = cam.getNextEventBatch()
            if store is not None:
                got = True
                pkt.events = self.dv_events(store)
        if self._streams["Frame"]:
            while (frame := cam.getNextFrame()) is not None:
                got = True
                pkt.frames.append(frame_from_dv(frame))
        if self._streams["Imu"]:
            imu = cam.getNextImuBatch()
            if imu is not None and len(imu):
                got = True
                pkt.imu = imu_from_dv(imu)
        if self._streams["Trigger"]:
            trig = cam.getNextTriggerBatch()
            if trig is not None and len(trig):
                got = True
                pkt.triggers = triggers_from_dv(trig)
        return pkt if got else None

    def _read(self) -> Iterator[Packet]:
        while not self._closed:
            try:
                running = self._cam.isRunning()
                pkt = self._poll()
            except Exception as e:  # noqa: BLE001 - a read failing mid-run ends the stream
                self._end(f"camera {self.camera} stopped: {_one_line(e)}")
                return
            if pkt is not None:
                yield pkt
                continue
            if not running:
                self._end(f"camera {self.camera} stopped (unplugged or shut down)")
                return
            time.sleep(self.idle_s)

    def close(self) -> None:
        self._closed = True
        self._cam = None         # a dv camera closes when its last reference goes


def parse_camera_spec(spec: str) -> tuple[str, dict]:
    """'camera:MODEL?k=v&...' -> (model, {k: v})."""
    rest = spec.split(":", 1)[1] if ":" in spec else spec
    model, _, query = rest.partition("?")
    options = {}
    for k, v in parse_qsl(query, keep_blank_values=True):
        options[k.replace("-", "_")] = v
    return model.strip().lower() or "any", options


QUERY_OPTIONS = ("serial", "time_interval_us", "aps", "exposure_us", "sensor_noise_filter_us")


def open_camera(spec: str, *, width=None, height=None, bad_events=None, filters=None,  # noqa: A002
                serial=None, time_interval_us=None, aps=None, exposure_us=None,
                sensor_noise_filter_us=None, discover=None, open=None) -> CameraSource:
    model, query = parse_camera_spec(spec)
    unknown = sorted(set(query) - set(QUERY_OPTIONS))
    if unknown:
        raise SourceError(f"{spec}: unknown camera option {unknown[0]!r} "
                          f"(known: {', '.join(QUERY_OPTIONS)})")
    given = dict(serial=serial, time_interval_us=time_interval_us, aps=aps,
                 exposure_us=exposure_us, sensor_noise_filter_us=sensor_noise_filter_us)
    for k, v in query.items():       # flags given on the command line win over the spec
        if given[k] is None:
            given[k] = v
    return CameraSource(model, spec=spec, width=width, height=height, bad_events=bad_events,
                        filters=filters, discover=discover, open=open, **given)


register_scheme("camera", open_camera)
