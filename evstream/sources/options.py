"""What a source takes besides its spec: reader options, camera settings and noise filters.

`SourceOptions` is the typed form of them. The commands build it from their arguments
(commands/common.py: `source_options(args, spec)`), the pipeline carries it to the source
process in `config.SourceConfig.options`, and `open_configured(spec, options)` opens the source
with it. Plain values only, so it pickles across `spawn`; a field left at None is not passed on,
so a reader only sees an option the user set (one it does not take is then a one-line error
from `open_source`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

if TYPE_CHECKING:
    from evstream.sources.base import EventSource


@dataclass(frozen=True)
class SourceOptions:
    # the reader
    width: int | None = None                    # sensor size, where the file does not say
    height: int | None = None
    bad_events: str | None = None               # "error" | "drop"; None: the reader's default
                                                # (error for files, drop for live sources)
    stream: str | None = None                   # which camera of a multi-camera .aedat4
    # camera settings (camera: sources only)
    serial: str | None = None                   # which camera, where the spec does not say
    time_interval_us: int | None = None         # packet interval (latency)
    aps: bool | None = None                     # DAVIS APS frames on/off
    exposure_us: int | None = None              # DAVIS APS exposure (auto-exposure off)
    sensor_noise_filter_us: int | None = None   # the camera's own background-activity filter
    # software noise filters, any source (applied as sources.filters orders them)
    roi: tuple[int, int, int, int] | None = None  # x, y, w, h: keep events inside
    polarity: str | None = None                 # "on" | "off": keep only these
    hot_pixels: str | None = None               # "X,Y;X,Y" or a file of x,y lines: dropped
    refractory_us: int | None = None            # per-pixel dead time
    ba_filter_us: int | None = None             # background activity: support window

    CAMERA: ClassVar[tuple[str, ...]] = ("time_interval_us", "aps", "exposure_us",
                                         "sensor_noise_filter_us")
    FILTERS: ClassVar[tuple[str, ...]] = ("ba_filter_us", "refractory_us", "hot_pixels", "roi",
                                          "polarity")

    def camera_settings(self, spec: str) -> dict:
        """The camera settings that are set (and the serial, where `spec` does not name one)."""
        cam = {k: getattr(self, k) for k in self.CAMERA if getattr(self, k) is not None}
        if self.serial and "serial=" not in spec:
            cam["serial"] = self.serial
        return cam

    def filter_options(self) -> dict:
        """The noise filters that are set, as `make_filter_chain` keywords."""
        return {k: getattr(self, k) for k in self.FILTERS if getattr(self, k) is not None}

    def reader_options(self, spec: str) -> dict:
        """`open_source(spec, **...)` keywords."""
        options = dict(width=self.width, height=self.height, bad_events=self.bad_events)
        if self.stream:
            options["stream"] = self.stream
        options.update(self.camera_settings(spec))
        return options


def open_configured(spec: str, options: SourceOptions | None = None, **extra) -> EventSource:
    """Open `spec` with these options and attach its noise filters (a FilterChain sized to the
    opened sensor). `extra` goes to the reader as it is (tests inject a camera this way); a
    `filters` keyword there replaces the options' filters. Not paced: see sources/pacing.py."""
    from evstream.sources import open_source
    from evstream.sources.filters import make_filter_chain

    options = options or SourceOptions()
    src = open_source(spec, **dict(options.reader_options(spec), **extra))
    try:
        flt = options.filter_options()
        if flt and extra.get("filters") is None:
            src.filters = make_filter_chain(src.width, src.height, **flt)
    except BaseException:
        src.close()
        raise
    return src
