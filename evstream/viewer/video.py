"""The viewer's file outputs: an MP4 written frame by frame, and PNG frames.

    out = VideoOut("run.mp4", fps=20.0)     # opened on the first frame (its size fixes the video's)
    out.write(frame); ...; out.close()       # close() finalises the file; call it on every exit

Codec: the writer tries the FOURCCS in order and keeps the first that opens. With the
opencv-python wheels (FFmpeg inside, no H.264 encoder: "avc1" fails with "Could not open codec
h264_v4l2m2m" on opencv-python 5.0.0.93) "mp4v" (MPEG-4 part 2) is the one that works, and
cv2.VideoCapture reads it back frame for frame; "avc1" stays as the fallback for OpenCV builds
against a system FFmpeg that lacks mpeg4.

Full disk: OpenCV's writer reports nothing when its writes fail (opencv-python 5.0.0.93: the
frames are dropped and the file is left without its index), so the free space is checked on
the first frame and every FREE_CHECK_EVERY frames after (a one-line error before the disk fills),
and close() reads the file back: fewer frames than were written is a one-line error too.

Frame size: the first frame fixes the size. MPEG-4 wants even sizes (the FFmpeg writer silently
crops an odd row/column), so the size is rounded up to even; every frame is padded (with
overlay.PANEL_BGR) or cropped to it, so a frame whose side panel grew never breaks the file.
"""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np

from evstream.atomic import atomic_write
from evstream.errors import EvstreamError
from evstream.outpaths import check_free, ensure_dir
from evstream.viewer.overlay import PANEL_BGR

FOURCCS = ("mp4v", "avc1")
FREE_CHECK_EVERY = 30           # frames between two free-space checks


def fit(frame: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    """`frame` padded with the panel colour and/or cropped to (h, w); a new array."""
    h, w = size_hw
    if frame.shape[:2] == (h, w):
        return frame
    out = np.empty((h, w, 3), np.uint8)
    out[:] = PANEL_BGR
    ch, cw = min(h, frame.shape[0]), min(w, frame.shape[1])
    out[:ch, :cw] = frame[:ch, :cw]
    return out


def open_writer(path: str, fps: float, size_hw: tuple[int, int]) -> tuple[cv2.VideoWriter, str]:
    """An opened cv2.VideoWriter and the FOURCC it uses, or a one-line EvstreamError."""
    h, w = size_hw
    for fourcc in FOURCCS:
        writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), float(fps), (w, h))
        if writer.isOpened():
            return writer, fourcc
        writer.release()
    raise EvstreamError(f"{path}: cannot open an MP4 writer (tried codecs {', '.join(FOURCCS)})")


class VideoOut:
    """An MP4 file written one frame at a time (see the module comment)."""

    def __init__(self, path: str | os.PathLike, fps: float):
        self.path = str(path)
        self.fps = float(fps)
        self.writer: cv2.VideoWriter | None = None
        self.fourcc = ""
        self.size_hw: tuple[int, int] | None = None
        self.frames = 0
        parent = Path(self.path).parent
        ensure_dir(parent, "video")

    def write(self, frame: np.ndarray) -> None:
        if self.writer is None:
            h, w = frame.shape[:2]
            self.size_hw = (h + h % 2, w + w % 2)
            self.writer, self.fourcc = open_writer(self.path, self.fps, self.size_hw)
        if self.frames % FREE_CHECK_EVERY == 0:
            # two raw frames: more than the compressed frames until the next check need
            check_free(self.path, "video", need=max(1 << 20, 2 * frame.nbytes))
        self.writer.write(fit(frame, self.size_hw))
        self.frames += 1

    def close(self) -> None:
        """Finalise the file, then check that every written frame is in it (a one-line
        EvstreamError otherwise: OpenCV does not report failed writes)."""
        if self.writer is None:
            return
        self.writer.release()
        self.writer = None
        on_disk = frames_in(self.path)
        if on_disk < self.frames:
            raise EvstreamError(f"{self.path}: the video is incomplete ({on_disk} of "
                                f"{self.frames} frames on disk; disk full?)")

    def info(self) -> dict:
        return {"path": self.path, "frames": self.frames, "fps": self.fps, "fourcc": self.fourcc}


def write_png(path: str | os.PathLike, frame: np.ndarray) -> None:
    """Write atomically (a temporary file in the same directory, then rename): a reader never
    sees half a PNG."""
    ok, data = cv2.imencode(".png", frame)
    if not ok:
        raise EvstreamError(f"{path}: cannot encode the frame as PNG")
    atomic_write(path, lambda f: f.write(data.tobytes()), durable=False, what="PNG file")


def frames_in(path: str | os.PathLike) -> int:
    """The frame count a video file's index declares (0 when it cannot be opened)."""
    cap = cv2.VideoCapture(str(path))
    try:
        return int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) if cap.isOpened() else 0
    finally:
        cap.release()


def read_video(path: str | os.PathLike) -> list[np.ndarray]:
    """Every frame of a video file, decoded (BGR uint8); [] when it cannot be opened."""
    cap = cv2.VideoCapture(str(path))
    frames = []
    try:
        while True:
            ok, frame = cap.read()
            if not ok:
                break
            frames.append(frame)
    finally:
        cap.release()
    return frames
