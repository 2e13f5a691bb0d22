"""Live camera adapter: fake cameras with dv's method names, serving a real recording's data."""

from __future__ import annotations

import argparse
import logging
from datetime import timedelta

import numpy as np
import pytest

dv = pytest.importorskip("dv_processing")

from evstream.commands.common import add_source_args, open_from_args  # noqa: E402
from evstream.errors import SourceError  # noqa: E402
from evstream.sources import open_source  # noqa: E402
from evstream.sources.camera import CameraSource, _one_line  # noqa: E402
from evstream.types import concat_events  # noqa: E402

DAVIS_FILE = "davis346_aestream_davis.aedat4"


class Descriptor:
    """Stands in for dv.io.camera.USBDevice.DeviceDescriptor (the fields we read)."""

    def __init__(self, model: str, serial: str, camera: "FakeCamera"):
        self.cameraModel = getattr(dv.io.camera.CameraModel, model)
        self.serialNumber = serial
        self.camera = camera


class FakeCamera:
    """dv.io.camera.CameraInputBase's reading methods, serving real dv objects from a recording.

    Every other poll returns None ("nothing ready yet"), as a live camera does between packets.
    `unplug_after` event batches later, isRunning() turns false (or a read raises, with
    `raise_on_unplug`).
    """

    model_prefix = "DAVIS346"

    def __init__(self, serial="00000104", resolution=(346, 260), recording=None,
                 unplug_after=None, raise_on_unplug=False):
        self.serial = serial
        self.resolution = resolution
        self.calls: list[tuple] = []
        self.time_interval = timedelta(milliseconds=10)
        self._events, self._frames, self._imu, self._triggers = [], [], [], []
        if recording is not None:
            rec = dv.io.MonoCameraRecording(str(recording))
            while (s := rec.getNextEventBatch()) is not None:
                self._events.append(s)
            while (f := rec.getNextFrame()) is not None:
                self._frames.append(f)
            while (i := rec.getNextImuBatch()) is not None:
                self._imu.append(i)
            while (t := rec.getNextTriggerBatch()) is not None:
                self._triggers.append(t)
        self.unplug_after = len(self._events) if unplug_after is None else unplug_after
        self.raise_on_unplug = raise_on_unplug
        self._served = 0
        self._tick = 0

    # -- InputBase ----------------------------------------------------------------------------
    def getCameraName(self):
        prefix = "DAVIS240C" if self.resolution == (240, 180) else self.model_prefix
        return f"{prefix}_{self.serial}"

    def getEventResolution(self):
        return self.resolution

    def getFrameResolution(self):
        return self.resolution if self.isFrameStreamAvailable() else None

    def isEventStreamAvailable(self):
        return True

    def isFrameStreamAvailable(self):
        return False

    def isImuStreamAvailable(self):
        return True

    def isTriggerStreamAvailable(self):
        return True

    def isStreamAvailable(self, name):
        return name in ("events", "imu", "triggers")

    def isRunning(self, *stream):
        return self._served < self.unplug_after

    def isRunningAny(self):
        return self.isRunning()

    def _unplugged(self):
        if self._served >= self.unplug_after and self.raise_on_unplug:
            raise RuntimeError("Device disconnected: USB transfer failed [system:19 at /x.hpp]")
        return self._served >= self.unplug_after

    def getNextEventBatch(self):
        self._tick += 1
        if self._unplugged() or self._tick % 2 or self._served >= len(self._events):
            return None
        self._served += 1
        return self._events[self._served - 1]

    def getNextFrame(self):
        # frames / IMU / triggers come out in step with the events served so far
        if self._frames and self._frames[0].timestamp <= self._served_until():
            return self._frames.pop(0)
        return None

    def getNextImuBatch(self):
        if self._imu and self._imu[0][0].timestamp <= self._served_until():
            return self._imu.pop(0)
        return None

    def getNextTriggerBatch(self):
        if self._triggers and self._triggers[0][0].timestamp <= self._served_until():
            return self._triggers.pop(0)
        return None

    def _served_until(self):
        if self._served == 0:
            return -1
        if self._served >= len(self._events):
            return 1 << 62
        return self._events[self._served - 1].getHighestTime()

    # -- CameraInputBase ------------------------------------------------------------------------
    def setTimeInterval(self, interval):
        self.calls.append(("setTimeInterval", interval))
        self.time_interval = interval

    def getTimeInterval(self):
        return self.time_interval

    # -- USBDevice ---------------------------------------------------------------------------------
    def getSerialNumber(self):
        return self.serial


class FakeDavis(FakeCamera):
    """dv.io.camera.DAVIS's extra settings (APS frames, exposure, FPGA noise filter)."""

    def isFrameStreamAvailable(self):
        return True

    def setFramesRunning(self, run):
        self.calls.append(("setFramesRunning", run))

    def isFramesRunning(self):
        return True

    def setAutoExposure(self, enabled):
        self.calls.append(("setAutoExposure", enabled))

    def setExposureDuration(self, duration):
        self.calls.append(("setExposureDuration", duration))

    def getExposureDuration(self):
        return timedelta(microseconds=4773)

    def setBackgroundActivityFilter(self, time_in_250us):
        self.calls.append(("setBackgroundActivityFilter", time_in_250us))

    def getBackgroundActivityFilter(self):
        return 8


class FakeDVXplorer(FakeCamera):
    model_prefix = "DVXplorer"


@pytest.mark.parametrize("fake, real", [(FakeDavis, dv.io.camera.DAVIS),
                                        (FakeDVXplorer, dv.io.camera.DVXplorer)])
def test_fakes_only_use_real_dv_method_names(fake, real):
    ours = {n for n in dir(fake) if not n.startswith("_") and callable(getattr(fake, n))}
    assert ours - set(dir(real)) == set()
    # and the DVXplorer really lacks what the adapter treats as DAVIS-only
    assert not hasattr(dv.io.camera.DVXplorer, "setFramesRunning")
    assert not hasattr(dv.io.camera.DVXplorer, "setBackgroundActivityFilter")


def devices(*cams):
    family = {FakeDavis: "DAVIS", FakeDVXplorer: "DVXPLORER", FakeCamera: "DVS128"}
    descs = [Descriptor(family[type(c)], c.serial, c) for c in cams]
    opened = []

    def discover():
        return descs

    def open_(desc):
        opened.append(desc.serialNumber)
        return desc.camera

    return dict(discover=discover, open=open_), opened


def test_selects_by_model_and_resolution():
    lite = FakeDVXplorer("DXB00010", (320, 240))
    d240 = FakeDavis("84010032", (240, 180))
    d346 = FakeDavis("00000104", (346, 260))
    inject, opened = devices(lite, d240, d346)
    src = open_source("camera:davis346", **inject)
    assert (src.width, src.height, src.camera) == (346, 260, "DAVIS346_00000104")
    assert opened == ["84010032", "00000104"]        # the 240 was opened, measured, put back
    assert src.live and src.bad_events == "drop"
    assert open_source("camera:davis240", **inject).camera == "DAVIS240C_84010032"
    assert open_source("camera:dvxplorer-lite", **inject).geometry == (320, 240)
    assert open_source("camera:any", **inject).camera == "DVXplorer_DXB00010"
    with pytest.raises(SourceError) as e:
        open_source("camera:dvxplorer", **inject)
    assert str(e.value) == (
        "camera:dvxplorer: no DVXPLORER camera found (looked for model dvxplorer, serial any); "
        "devices found: DVXPLORER DXB00010, DAVIS 84010032, DAVIS 00000104 "
        "(DVXPLORER DXB00010 is 320x240)")


def test_selects_by_serial():
    a, b = FakeDavis("00000001"), FakeDavis("00000002")
    inject, opened = devices(a, b)
    src = open_source("camera:davis346?serial=00000002", **inject)
    assert src.camera == "DAVIS346_00000002" and opened == ["00000002"]
    assert open_source("camera:any", serial="00000001", **inject).camera == "DAVIS346_00000001"
    p = argparse.ArgumentParser()
    add_source_args(p)
    for argv in (["camera:any", "--serial", "00000002"], ["--camera", "any", "--serial",
                                                          "00000002"]):
        assert open_from_args(p.parse_args(argv), **inject).camera == "DAVIS346_00000002"
    with pytest.raises(SourceError, match=r"^camera:davis346\?serial=9: no DAVIS346 camera found "
                       r"\(looked for model davis346, serial 9\); devices found: "
                       r"DAVIS 00000001, DAVIS 00000002$"):
        open_source("camera:davis346?serial=9", **inject)


def test_no_camera_message():
    with pytest.raises(SourceError) as e:
        open_source("camera:davis346", discover=lambda: [], open=lambda d: None)
    assert str(e.value) == ("camera:davis346: no DAVIS346 camera found (looked for model "
                            "davis346, serial any); devices found: none")


def test_open_failure_is_reported():
    cam = FakeDavis()

    def busy(desc):
        raise RuntimeError("/project/include/dv-processing/io/camera/usb_device.hpp(90): f()\n"
                           "RuntimeError: Failed to open device: LIBUSB_ERROR_BUSY\nStacktrace:\n")

    with pytest.raises(SourceError, match=r"DAVIS 00000104 could not be opened: Failed to open "
                       r"device: LIBUSB_ERROR_BUSY\)$"):
        open_source("camera:davis346", discover=lambda: [Descriptor("DAVIS", "00000104", cam)],
                    open=busy)


def test_unknown_model_and_option():
    with pytest.raises(SourceError, match="unknown camera model 'davis999'"):
        open_source("camera:davis999", discover=lambda: [], open=lambda d: None)
    with pytest.raises(SourceError, match="unknown camera option 'gain'"):
        open_source("camera:davis346?gain=3", discover=lambda: [], open=lambda d: None)


def test_streams_real_recording_data(realdata):
    cam = FakeDavis(recording=realdata / "aedat4" / DAVIS_FILE)
    inject, _ = devices(cam)
    src = open_source("camera:davis346", **inject)
    pkts = list(src.packets())
    ev = concat_events([p.events for p in pkts])
    # MANIFEST: 117,667 events (p1 72,363), 3 frames, 130 IMU samples, 15 triggers
    assert len(ev) == 117_667 and int(ev["p"].sum()) == 72_363
    assert ev["t"][0] == 1633953690975950 and ev["t"][-1] == 1633953691105949
    assert np.all(np.diff(ev["t"]) >= 0)
    assert sum(len(p.frames) for p in pkts) == 3
    assert sum(len(p.imu) for p in pkts) == 130
    assert sum(len(p.triggers) for p in pkts) == 15
    frame = next(f for p in pkts for f in p.frames)
    assert frame.image.shape == (260, 346) and frame.exposure_us == 4773
    assert src.stats.events == 117_667 and src.stats.frames == 3
    imu = np.concatenate([p.imu for p in pkts])
    assert 0.9 < float(np.linalg.norm(imu["accel"], axis=1).mean()) < 1.1   # |a| ~ 1 g
    assert "stopped" in src.end_reason     # the fake stops after its last batch


@pytest.mark.parametrize("raise_on_unplug", [False, True])
def test_unplug_mid_run_ends_cleanly(realdata, caplog, raise_on_unplug):
    cam = FakeDavis(recording=realdata / "aedat4" / DAVIS_FILE, unplug_after=5,
                    raise_on_unplug=raise_on_unplug)
    inject, _ = devices(cam)
    src = open_source("camera:davis346", **inject)
    with caplog.at_level(logging.WARNING, logger="evstream.sources.camera"):
        n = sum(len(ev) for ev in src)
    assert n == sum(len(s) for s in cam._events[:5])
    assert src.end_reason.startswith("camera:davis346: camera DAVIS346_00000104 stopped")
    if raise_on_unplug:
        assert src.end_reason.endswith("Device disconnected: USB transfer failed")
    else:
        assert src.end_reason.endswith("(unplugged or shut down)")
    assert [r.getMessage() for r in caplog.records] == [src.end_reason]
    assert list(src) == []          # stays ended
    src.close()
    src.close()


def test_settings_applied_to_davis():
    cam = FakeDavis()
    inject, _ = devices(cam)
    src = open_source("camera:davis346?aps=off&time_interval_us=2500", **inject)
    assert cam.calls == [("setTimeInterval", timedelta(microseconds=2500)),
                         ("setFramesRunning", False)]
    assert src.settings == {"time_interval_us": 2500, "aps": False}
    with pytest.raises(SourceError, match="--exposure-us with --no-aps"):
        open_source("camera:davis346?aps=off", exposure_us=8000, **inject)
    cam.calls.clear()
    src = open_source("camera:davis346", time_interval_us=2500, aps=True, exposure_us=8000,
                      sensor_noise_filter_us=2100, **inject)
    assert cam.calls == [("setTimeInterval", timedelta(microseconds=2500)),
                         ("setFramesRunning", True), ("setAutoExposure", False),
                         ("setExposureDuration", timedelta(microseconds=8000)),
                         ("setBackgroundActivityFilter", 8)]        # 2100 us -> 8 x 250 us
    assert src.settings == {"time_interval_us": 2500, "aps": True, "exposure_us": 8000,
                            "sensor_noise_filter_us": 2000}


def test_settings_the_model_lacks():
    cam = FakeDVXplorer("DXA00093", (640, 480))
    inject, _ = devices(cam)
    src = open_source("camera:dvxplorer", aps=False, time_interval_us=1000, **inject)
    assert cam.calls == [("setTimeInterval", timedelta(microseconds=1000))]   # aps=False: no-op
    assert src.settings == {"time_interval_us": 1000}
    for opts, flag in [(dict(aps=True), "--aps"), (dict(exposure_us=5000), "--exposure-us"),
                       (dict(sensor_noise_filter_us=2000), "--sensor-noise-filter")]:
        with pytest.raises(SourceError) as e:
            open_source("camera:dvxplorer", **opts, **inject)
        assert str(e.value).startswith("camera:dvxplorer: DVXplorer_DXA00093 has no")
        assert flag in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(SourceError, match="--time-interval-us 0: expected 1..1000000"):
        open_source("camera:dvxplorer", time_interval_us=0, **inject)
    with pytest.raises(SourceError, match="do not match the camera's 640x480 sensor"):
        open_source("camera:dvxplorer", width=346, **inject)


def test_cli_flags_reach_the_camera_and_filters(realdata):
    cam = FakeDavis(recording=realdata / "aedat4" / DAVIS_FILE)
    inject, _ = devices(cam)
    p = argparse.ArgumentParser()
    add_source_args(p)
    args = p.parse_args(["--camera", "davis346", "--no-aps", "--time-interval-us", "5000",
                         "--sensor-noise-filter", "--ba-filter-us", "2000"])
    src = open_from_args(args, **inject)
    assert cam.calls == [("setTimeInterval", timedelta(microseconds=5000)),
                         ("setFramesRunning", False), ("setBackgroundActivityFilter", 8)]
    n = sum(len(ev) for ev in src)
    # the software BA filter runs on dv's EventStores: same count as on the file (69,887)
    assert n == 69_887 and src.stats.filtered == 117_667 - 69_887
    assert src.filters.counts == {"background_activity": 117_667 - 69_887}


def test_real_discovery_finds_no_camera_here():
    found = dv.io.camera.discover()
    if found:
        pytest.skip(f"a camera is attached ({len(found)} found)")
    # dv's own open() says nothing useful without a camera (dv-processing 2.0.4) ...
    with pytest.raises(IndexError):
        dv.io.camera.open()
    # ... ours says what was looked for and what was found
    with pytest.raises(SourceError) as e:
        CameraSource("davis346")
    assert str(e.value) == ("camera:davis346: no DAVIS346 camera found (looked for model "
                            "davis346, serial any); devices found: none")


def test_one_line_strips_dv_noise():
    e = RuntimeError("/project/include/dv-processing/io/camera/discovery.hpp(88): open()\n"
                     "RuntimeError: Could not find device with given serial number\n"
                     "Stacktrace:\n 0# 0x3ABBDA in dv_processing.so\n")
    assert _one_line(e) == "Could not find device with given serial number"
