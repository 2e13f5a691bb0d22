"""EvDistill's event image: per-polarity counts, each scaled by its own maximum to 8 bits, in the
R and G planes of an RGB picture, B empty. Float32 (3, H, W):

    n_on[y, x], n_off[y, x]     event counts per pixel; ON is p > 0, OFF anything else
    m_on, m_off                 their maxima over the window (a plane with no events: all 0)
    E[0] = floor(255 * n_on  / m_on)  / 255       R: ON
    E[1] = floor(255 * n_off / m_off) / 255       G: OFF
    E[2] = 0                                      B: always empty

The floor is taken in exact integer arithmetic ((255 * n) // m) and the division by 255 in
float32, which is what torchvision's ToTensor does to the 8-bit PNG (uint8 -> float32 / 255),
so a channel holds exactly the values the authors' network read: k / 255 for k in 0..255. The
maximal pixel of a plane is 1.0; a pixel holding less than m / 255 events of a plane reads 0
there (with m > 255 the weakest pixels vanish, as in the PNG). `quantize=False` skips the 8-bit
step: E[c] = n_c / m_c in float32 (then E[0:2] is `histogram_max` with its channels swapped).

Where this comes from. The authors' repository (addisonwang2013/evdistill) holds no code that
builds the event input; its README ("Note", line 79) says only that the events were embedded and
stored as multi-channel event images paired with the APS frames. The loader
(event_aps_dataset_v2.py, lines 69-87) opens each side-by-side PNG as RGB, takes the left half
as the event input and the right half as the APS frame, resizes both to 512x256 (bicubic) and
applies ToTensor only (no mean/std normalisation); the event network is a 3-channel
DeepLabv3+ (test_evdistill.py line 22; backbone first conv 3 -> 64, modeling/backbone/resnet.py
line 61). The encoding itself was read here off the two sample pictures the same authors ship
in the same format with their companion paper's code (addisonwang2013/DTL,
dataset/dtl_data/images/{general,ldr}/*.png, loaded by dtl_dataloader.py lines 54-63 exactly as
above; DDD17 frames, halves 346x200):
- B is 0 at every pixel of the event half; R and G take only the levels floor(255 k / m) for
  integer k (general.png: R in steps of 255/5 with m = 5, G in steps of 255/4 with m = 4;
  ldr.png: both in steps of 255/14). Every level of ldr.png and of general.png's G is exactly
  the floor; general.png's R reads 50 where the floor gives 51 (its other four levels match),
  a one-grey-level difference consistent with a min-max rescale done in floating point before
  the 8-bit cast. The levels show that each plane is divided by its own maximum (5 and 4 in one
  picture), not by a shared one.
- R is ON and G is OFF: on general.png (a well exposed frame of forward driving), 69-73% of
  the R pixels lie where the APS frame's gradient predicts a brightness increase under the
  outward image motion of forward driving, and 67-71% of the G pixels where it predicts a
  decrease (five choices of the focus of expansion, the stronger half of the predictions).
  ldr.png's APS half is over-exposed and says nothing either way.
- The frames are EV-SegNet's (Shathe/Ev-SegNet, generate_dataset.py at commit 7f96ae2: DDD17
  export frames cropped to the top 200 rows, saved as <rec>_export_<frame>, the pictures' names).
  EV-SegNet's stored event tensor has the ON count in channel 0 and OFF in channel 1
  (show_events.py, same commit, lines 38-41), already rescaled by that release, which would
  explain a float min-max rescale and so the one-grey-level difference above.
- The window length is recorded in neither repository: the events of each frame come from the
  DDD17 export tool's per-frame event tensor (generate_dataset.py reads `dvs_frame`), whose bin
  width is set outside both. evstream's default window_us (50 ms) is the usual reading of
  EV-SegNet, not a checked fact.
- EvDistill's own DDD17/MVSEC download (a Google Drive folder) was not inspected; that it uses
  the encoding of the DTL samples rests on the identical loader, README note and file layout.
So this reproduces the event planes of those pictures (to within the one grey level above),
not the bicubic resize to 512x256 that their loader applies (input geometry is the data
pipeline's business) and not, for certain, their window length.

Two implementations, held equal (bit for bit) by tests: `evdistill_rgb_numpy` (np.bincount,
integer floor) and `evdistill_rgb` (Numba: one pass over the records counting into the output
planes, exact integers in float32 up to 2**24 events per pixel, then one pass per plane). Event
order does not matter (no sortedness check); `events` is never modified.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from evstream.represent.histogram import polarity_count_kernel
from evstream.represent.registry import (check_bounds_numpy, raise_kernel_error,
                                         register_representation, zeroed_output)

CHANNELS = 3
LEVELS = 255          # 8-bit picture: 0..255


def evdistill_rgb_numpy(events: np.ndarray, height: int, width: int, quantize: bool = True,
                        out: np.ndarray | None = None) -> np.ndarray:
    """EvDistill event image (3, height, width) float32: R = ON, G = OFF, B = 0 (reference)."""
    img, height, width = zeroed_output(events, height, width, out, CHANNELS)
    if len(events) == 0:
        return img
    x = events["x"].astype(np.int64)
    y = events["y"].astype(np.int64)
    check_bounds_numpy(x, y, events["t"], height, width)
    channel = (events["p"] <= 0).astype(np.int64)          # 0: ON, 1: OFF
    counts = np.bincount((channel * height + y) * width + x, minlength=2 * height * width)
    counts = counts.reshape(2, height, width)
    for c in range(2):
        peak = int(counts[c].max())
        if peak == 0:
            continue
        if quantize:
            img[c] = ((LEVELS * counts[c]) // peak).astype(np.float32) / np.float32(LEVELS)
        else:
            img[c] = counts[c].astype(np.float32) / np.float32(peak)
    return img


@njit(cache=True, nogil=True, boundscheck=False)
def _scale_kernel(img, quantize):
    """Each of planes 0 and 1 divided by its maximum, floored to k / 255 when quantize."""
    levels = np.int64(LEVELS)
    inv = np.float32(LEVELS)
    for c in range(2):
        ch = img[c].reshape(-1)
        peak = np.float32(0.0)
        for j in range(ch.shape[0]):
            if ch[j] > peak:
                peak = ch[j]
        if peak == 0:
            continue
        m = np.int64(peak)
        for j in range(ch.shape[0]):
            if quantize:
                ch[j] = np.float32((levels * np.int64(ch[j])) // m) / inv
            else:
                ch[j] = ch[j] / peak


def evdistill_rgb(events: np.ndarray, height: int, width: int, quantize: bool = True,
                  out: np.ndarray | None = None) -> np.ndarray:
    """EvDistill event image (3, height, width) float32: R = ON, G = OFF, B = 0 (fast kernel).

    Each of R and G is its count plane over the plane's maximum, floored to 8 bits
    (k / 255) unless quantize=False. Writes into `out` (zeroed first) when given.
    """
    img, height, width = zeroed_output(events, height, width, out, CHANNELS)
    if len(events) == 0:
        return img
    code, index = polarity_count_kernel(events, height, width, img.reshape(-1), 0)
    raise_kernel_error(code, index, events, height, width)
    _scale_kernel(img, bool(quantize))
    return img


evdistill_rgb_numba = evdistill_rgb


@register_representation("evdistill_rgb")
class EvDistillRGB:
    """EvDistill's event PNG: R = ON, G = OFF counts over their maxima (8-bit), B = 0."""

    requires_sorted = False
    test_params = ({}, {"quantize": False})

    def channels(self, quantize: bool = True) -> int:
        return CHANNELS

    def compute(self, events, height, width, out=None, quantize: bool = True):
        return evdistill_rgb(events, height, width, quantize=quantize, out=out)

    def compute_numpy(self, events, height, width, out=None, quantize: bool = True):
        return evdistill_rgb_numpy(events, height, width, quantize=quantize, out=out)
