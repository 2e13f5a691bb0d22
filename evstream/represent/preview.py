"""A representation window -> a signed per-pixel event image for display.

    img = event_image("voxel", voxels)      # int8 (H, W): +1 net ON, -1 net OFF, 0 no events

Every representation in the registry keeps polarity recoverable: the voxel grid sums signed
polarity over its bins; the 2-channel ones (histogram, histogram_max, timesurface) hold OFF in
channel 0 and ON in channel 1; evdistill_rgb holds ON in channel 0 and OFF in channel 1 (its
R and G; channel 2 is empty), each scaled by its own maximum, so there the sign compares the
two scaled planes. The image is the sign of ON minus OFF, so it is drawn the same way
whatever the pipeline computes. Pure: the input is not modified.
"""

from __future__ import annotations

import numpy as np

TWO_CHANNEL = ("histogram", "histogram_max", "timesurface")
ON_FIRST = ("evdistill_rgb",)


def event_image(representation: str, rep: np.ndarray) -> np.ndarray:
    rep = np.asarray(rep)
    if rep.ndim != 3:
        raise ValueError(f"a representation window is (C, H, W), got shape {rep.shape}")
    if representation in TWO_CHANNEL:
        net = rep[1].astype(np.float32) - rep[0].astype(np.float32)
    elif representation in ON_FIRST:
        net = rep[0].astype(np.float32) - rep[1].astype(np.float32)
    else:
        net = rep.sum(axis=0, dtype=np.float32)
    return np.sign(net).astype(np.int8)
