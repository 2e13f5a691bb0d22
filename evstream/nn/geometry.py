"""Sensor <-> network geometry: the model config's "input" block, applied and undone.

    input = {"crop": [y0, x0, h, w] | None,   # 1. cut from the sensor-size tensor
             "resize": [h, w] | None,         # 2. bilinear resize (labels: nearest-exact)
             "pad_multiple": 16,              # 3. zero-pad bottom/right to a multiple (labels: 255)
             "height", "width"}               # informational: the size after 1 and 2
Without crop and resize the network sees the whole sensor, whatever its size, so one
fully-convolutional model runs on any camera; "height"/"width" are not enforced.

    to_network(x, input_cfg, labels=False) -> tensor
        images/representations: (C,H,W) or (N,C,H,W), numpy or torch -> float32 (N,C,h,w)
        (float64 and integer inputs become float32). labels=True: any (...,H,W) integer array or
        tensor -> (...,h,w), dtype kept, nearest-exact resize, padding 255.
    to_sensor(y, input_cfg, sensor_hw, labels=False, fill=None) -> tensor
        (N,K,h,w) network output (logits, probabilities, confidence) -> (N,K,H,W) by removing the
        padding, undoing the resize (bilinear; labels nearest-exact) and placing the result into a
        sensor-size canvas. Pixels outside the crop hold `fill` (default 0, labels 255).
        labels=True also accepts (...,h,w).
    network_input_hw(input_cfg, sensor_hw) -> (h, w) the padded size the network sees
    coverage_mask(input_cfg, sensor_hw) -> bool numpy (H, W): True where the network sees the sensor
A crop that does not fit the sensor, or a tensor whose size differs from the geometry's, is a
one-line EvstreamError. Inputs are never modified; outputs are new tensors on the input's device.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from evstream.errors import EvstreamError

IGNORE_LABEL = 255


def _crop(input_cfg: dict, sensor_hw) -> tuple[int, int, int, int]:
    H, W = int(sensor_hw[0]), int(sensor_hw[1])
    crop = (input_cfg or {}).get("crop")
    if crop is None:
        return 0, 0, H, W
    if len(crop) != 4 or any(isinstance(v, bool) or int(v) != v for v in crop):
        raise EvstreamError(f"model input: crop must be [y0, x0, h, w] integers, got {crop!r}")
    y0, x0, h, w = (int(v) for v in crop)
    if y0 < 0 or x0 < 0 or h < 1 or w < 1 or y0 + h > H or x0 + w > W:
        raise EvstreamError(f"model input: crop [y0={y0}, x0={x0}, h={h}, w={w}] does not fit a "
                            f"{W}x{H} sensor")
    return y0, x0, h, w


def _resized_hw(input_cfg: dict, sensor_hw) -> tuple[int, int]:
    resize = (input_cfg or {}).get("resize")
    if resize is None:
        _, _, h, w = _crop(input_cfg, sensor_hw)
        return h, w
    if len(resize) != 2 or any(isinstance(v, bool) or int(v) != v or v < 1 for v in resize):
        raise EvstreamError(f"model input: resize must be [h, w] positive integers, got {resize!r}")
    return int(resize[0]), int(resize[1])


def _pad_multiple(input_cfg: dict) -> int:
    m = (input_cfg or {}).get("pad_multiple") or 1
    if isinstance(m, bool) or int(m) != m or m < 1:
        raise EvstreamError(f"model input: pad_multiple must be a positive integer, got {m!r}")
    return int(m)


def network_input_hw(input_cfg: dict, sensor_hw) -> tuple[int, int]:
    h, w = _resized_hw(input_cfg, sensor_hw)
    m = _pad_multiple(input_cfg)
    return -(-h // m) * m, -(-w // m) * m


def coverage_mask(input_cfg: dict, sensor_hw) -> np.ndarray:
    y0, x0, h, w = _crop(input_cfg, sensor_hw)
    mask = np.zeros((int(sensor_hw[0]), int(sensor_hw[1])), dtype=bool)
    mask[y0:y0 + h, x0:x0 + w] = True
    return mask


def _as_tensor(x) -> torch.Tensor:
    if isinstance(x, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(x))
    if isinstance(x, torch.Tensor):
        return x
    raise TypeError(f"expected a numpy array or torch tensor, got {type(x).__name__}")


def _resize(x: torch.Tensor, size, labels: bool) -> torch.Tensor:
    if tuple(x.shape[2:]) == tuple(size):
        return x
    if labels:   # labels <= 255 and small class ids are exact in float32
        y = F.interpolate(x.to(torch.float32), size=tuple(size), mode="nearest-exact")
        return y.to(x.dtype)
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


def _to_4d(x: torch.Tensor, labels: bool, what: str) -> tuple[torch.Tensor, tuple]:
    """(B, K, H, W) view of x and the leading shape to restore afterwards (labels only)."""
    if labels:
        if x.dim() < 2:
            raise ValueError(f"{what}: labels need at least 2 dimensions, got {tuple(x.shape)}")
        lead = tuple(x.shape[:-2])
        return x.reshape(-1, 1, *x.shape[-2:]), lead
    if x.dim() == 3:
        return x.unsqueeze(0), None
    if x.dim() == 4:
        return x, None
    raise ValueError(f"{what}: expected (C,H,W) or (N,C,H,W), got {tuple(x.shape)}")


def to_network(x, input_cfg: dict, labels: bool = False) -> torch.Tensor:
    t = _as_tensor(x)
    t4, lead = _to_4d(t, labels, "to_network")
    if not labels and t4.dtype != torch.float32:
        t4 = t4.to(torch.float32)
    sensor_hw = tuple(t4.shape[2:])
    y0, x0, h, w = _crop(input_cfg, sensor_hw)
    t4 = t4[:, :, y0:y0 + h, x0:x0 + w]
    t4 = _resize(t4, _resized_hw(input_cfg, sensor_hw), labels)
    ph, pw = network_input_hw(input_cfg, sensor_hw)
    pad = (0, pw - t4.shape[3], 0, ph - t4.shape[2])
    if pad[1] or pad[3]:
        t4 = F.pad(t4, pad, value=IGNORE_LABEL if labels else 0.0)
    if t4.untyped_storage().data_ptr() == t.untyped_storage().data_ptr():
        t4 = t4.clone()          # never hand out a view of the caller's array
    t4 = t4.contiguous()
    return t4.reshape(*lead, ph, pw) if labels else t4


def to_sensor(y, input_cfg: dict, sensor_hw, labels: bool = False, fill=None) -> torch.Tensor:
    t = _as_tensor(y)
    t4, lead = _to_4d(t, labels, "to_sensor")
    H, W = int(sensor_hw[0]), int(sensor_hw[1])
    expect = network_input_hw(input_cfg, (H, W))
    if tuple(t4.shape[2:]) != expect:
        raise EvstreamError(f"model output is {t4.shape[3]}x{t4.shape[2]}, but the input geometry "
                            f"of a {W}x{H} sensor gives {expect[1]}x{expect[0]}")
    rh, rw = _resized_hw(input_cfg, (H, W))
    y0, x0, h, w = _crop(input_cfg, (H, W))
    t4 = _resize(t4[:, :, :rh, :rw], (h, w), labels)
    if fill is None:
        fill = IGNORE_LABEL if labels else 0
    out = torch.full((t4.shape[0], t4.shape[1], H, W), fill, dtype=t4.dtype, device=t4.device)
    out[:, :, y0:y0 + h, x0:x0 + w] = t4
    return out.reshape(*lead, H, W) if labels else out
