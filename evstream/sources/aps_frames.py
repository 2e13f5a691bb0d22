"""APS frame assembly for jAER AEDAT 2.0 DAVIS recordings (a numba state machine).

A DAVIS APS frame arrives as ADC reads spread over many records: one reset read and one signal
read per pixel, interleaved with DVS and IMU words, and possibly split across the reader's
chunks. `ApsAssembler(width, height, flip_y)` carries a frame in progress from one `feed` to the
next; aedat2.py hands it each chunk's APS words (bit 31 set, bits 10-11 not 3) in file order.

Contract:
- `feed(addr, t_us) -> list[Frame]`: addr are the raw uint32 APS addresses (x = bits 12-21,
  y = bits 22-30, read = bits 10-11: 0 reset, 1 signal, 2 a deprecated third read; ADC = bits
  0-9), t_us their unwrapped int64 times. The inputs are only read. Returns the frames completed
  by these words, in order, each image its own uint8 (H, W) array.
- A frame starts at a reset read on a sensor corner that follows a signal read on the opposite
  corner (the previous frame's last pixel), or at the file's first usable APS read if that is a
  corner reset. It is complete at its width*height-th signal read if it then has width*height
  reset reads; the image is clip(reset - signal, 0, 1023) >> 2, with y flipped to a top-left
  origin when flip_y (x is never flipped for APS reads).
- Frame.t_us is the start of exposure: the last reset read in global-shutter mode (all resets
  before the first signal read), the first reset read in rolling-shutter mode; exposure_us runs
  from there to the first signal read.
- Reads outside a frame, third reads and reads outside width x height are counted in `ignored`;
  frames that lose sync (more resets than pixels, a new frame starting, too few resets) in
  `incomplete`. At the end of a file, `active` says a frame was still being assembled (with
  `n_reset` / `n_signal` reads so far); the reader notes and counts it.
"""

from __future__ import annotations

import numba
import numpy as np

from evstream.types import Frame

# state slots
_A_NRESET, _A_NSIGNAL = 0, 1                  # reads so far in the current frame
_A_TFIRST_RESET, _A_TLAST_RESET, _A_TFIRST_SIGNAL, _A_TEXP = 2, 3, 4, 5
_A_ACTIVE = 6                                  # 1 while a frame is being assembled
_A_PREV_RC, _A_PREV_X, _A_PREV_Y = 7, 8, 9     # the previous APS read (raw coordinates)
_A_INCOMPLETE, _A_IGNORED, _A_SEEN = 10, 11, 12
_A_NSLOTS = 13


def new_aps_state() -> np.ndarray:
    st = np.zeros(_A_NSLOTS, np.int64)
    st[_A_PREV_RC] = -1
    return st


@numba.njit(cache=True, nogil=True)
def _is_corner(x, y, w, h):
    return (x == 0 or x == w - 1) and (y == 0 or y == h - 1)


@numba.njit(cache=True, nogil=True)
def assemble_aps(addr, t, width, height, flip_y, reset_buf, signal_buf, st,
                 out_img, out_t, out_exp):
    """Feed APS words (uint32 addresses, int64 times) through the frame state machine.

    reset_buf / signal_buf (int16 H x W) and st (new_aps_state()) carry a frame across calls.
    Complete frames go to out_img[k] (uint8 H x W), out_t[k], out_exp[k]; returns their count.
    The inputs are only read.
    """
    npix = width * height
    n_out = 0
    for i in range(addr.size):
        a = addr[i]
        rc = (a >> 10) & 3
        xr = (a >> 12) & 0x3FF
        yr = (a >> 22) & 0x1FF
        if rc > 1 or xr >= width or yr >= height:
            st[_A_IGNORED] += 1
            continue
        x = xr
        y = height - 1 - yr if flip_y else yr
        adc = a & 0x3FF
        if rc == 0:
            starts = False
            if _is_corner(xr, yr, width, height):
                if st[_A_SEEN] == 0:
                    starts = True      # first APS read of the file, on a corner
                elif (st[_A_PREV_RC] == 1 and st[_A_PREV_X] == width - 1 - xr
                      and st[_A_PREV_Y] == height - 1 - yr):
                    starts = True      # right after the opposite corner's signal read
            if starts:
                if st[_A_ACTIVE] == 1:
                    st[_A_INCOMPLETE] += 1
                st[_A_ACTIVE] = 1
                st[_A_NRESET] = 0
                st[_A_NSIGNAL] = 0
                st[_A_TFIRST_RESET] = t[i]
            if st[_A_ACTIVE] == 1:
                if st[_A_NRESET] >= npix:          # more resets than pixels: lost sync
                    st[_A_INCOMPLETE] += 1
                    st[_A_ACTIVE] = 0
                else:
                    reset_buf[y, x] = adc
                    st[_A_NRESET] += 1
                    st[_A_TLAST_RESET] = t[i]
            else:
                st[_A_IGNORED] += 1
        else:
            if st[_A_ACTIVE] == 1:
                if st[_A_NSIGNAL] == 0:
                    st[_A_TFIRST_SIGNAL] = t[i]
                    if st[_A_NRESET] >= npix:      # global shutter: all resets came first
                        st[_A_TEXP] = st[_A_TLAST_RESET]
                    else:                          # rolling shutter
                        st[_A_TEXP] = st[_A_TFIRST_RESET]
                signal_buf[y, x] = adc
                st[_A_NSIGNAL] += 1
                if st[_A_NSIGNAL] == npix:
                    if st[_A_NRESET] == npix:
                        for yy in range(height):
                            for xx in range(width):
                                v = np.int32(reset_buf[yy, xx]) - np.int32(signal_buf[yy, xx])
                                if v < 0:
                                    v = 0
                                out_img[n_out, yy, xx] = np.uint8(v >> 2)
                        out_t[n_out] = st[_A_TEXP]
                        out_exp[n_out] = st[_A_TFIRST_SIGNAL] - st[_A_TEXP]
                        n_out += 1
                    else:
                        st[_A_INCOMPLETE] += 1
                    st[_A_ACTIVE] = 0
            else:
                st[_A_IGNORED] += 1
        st[_A_SEEN] = 1
        st[_A_PREV_RC] = rc
        st[_A_PREV_X] = xr
        st[_A_PREV_Y] = yr
    return n_out


class ApsAssembler:
    """The state machine's buffers and state for one pass over one file."""

    def __init__(self, width: int, height: int, flip_y: bool):
        self.width, self.height, self.flip_y = width, height, flip_y
        self._reset_buf = np.zeros((height, width), np.int16)
        self._signal_buf = np.zeros((height, width), np.int16)
        self._st = new_aps_state()

    def feed(self, addr: np.ndarray, t_us: np.ndarray) -> list[Frame]:
        gw, gh = self.width, self.height
        nmax = int(np.count_nonzero(((addr >> 10) & 3) == 1)) // (gw * gh) + 1
        imgs = np.empty((nmax, gh, gw), np.uint8)
        ft = np.empty(nmax, np.int64)
        fe = np.empty(nmax, np.int64)
        k = assemble_aps(addr, t_us, gw, gh, self.flip_y, self._reset_buf, self._signal_buf,
                         self._st, imgs, ft, fe)
        return [Frame(t_us=int(ft[i]), image=imgs[i].copy(), exposure_us=int(fe[i]))
                for i in range(k)]

    @property
    def active(self) -> bool:
        return bool(self._st[_A_ACTIVE] == 1)

    @property
    def n_reset(self) -> int:
        return int(self._st[_A_NRESET])

    @property
    def n_signal(self) -> int:
        return int(self._st[_A_NSIGNAL])

    @property
    def incomplete(self) -> int:
        return int(self._st[_A_INCOMPLETE])

    @property
    def ignored(self) -> int:
        return int(self._st[_A_IGNORED])
