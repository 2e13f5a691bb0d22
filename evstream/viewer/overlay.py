"""Drawing a prediction: pure functions from numpy arrays to new BGR uint8 images.

    base  = events_image(event_img)                      # (H, W, 3): ON / OFF on dark grey
    base  = events_image(event_img, background=aps)      # ... over the APS frame
    seg   = segmentation_overlay(base, labels, colors, alpha=0.5)
    frame = compose(event_img, labels=labels, classes=cls, colors=colors, alpha=0.5,
                    status=hud_lines(...), scale=2.0)    # the whole viewer frame

Contracts:
- Nothing here modifies its inputs; every function returns a new C-contiguous uint8 (H, W, 3)
  image in OpenCV's BGR order. `event_img` is the signed event image of
  evstream.represent.preview.event_image (int8: +1 net ON, -1 net OFF, 0 none).
- Class colours come as RGB triples (the model config's `colors`), converted here to BGR.
- Segmentation labels use 255 (and any id without a colour) for "no prediction": those pixels
  are left exactly as they were. alpha 0 leaves the image unchanged, alpha 1 paints the class
  colour exactly.
- `compose` lays the frame out as [sensor image scaled by `scale` | side panel]: the HUD text,
  the class legend and the top-k labels live in the panel, never over the events. The sensor
  image is at the top-left corner, (round(H*scale), round(W*scale)) pixels, upscaled with
  nearest neighbour so single events stay crisp squares; `image_size(h, w, scale)` gives that
  size. The frame's height and width are even (padded with the panel colour) because MPEG-4
  encoders crop odd sizes.
"""

from __future__ import annotations

import cv2
import numpy as np

# colours (BGR)
BACKGROUND_BGR = (32, 32, 32)      # no event, no APS frame
ON_BGR = (255, 170, 40)            # net ON polarity: blue
OFF_BGR = (40, 40, 255)            # net OFF polarity: red
PANEL_BGR = (18, 18, 18)           # side panel
TEXT_BGR = (235, 235, 235)
DIM_TEXT_BGR = (150, 150, 150)
WARN_BGR = (0, 165, 255)           # amber: the UNTRAINED badge, warnings
WARN_TEXT_BGR = (0, 0, 0)

FONT = cv2.FONT_HERSHEY_SIMPLEX
FONT_SCALE = 0.42
LINE_H = 17                        # pixels per text line
PAD = 8                            # panel margins
PANEL_W = 220                      # side panel width (pixels, independent of `scale`)
HUD_ROWS = 11                      # text rows kept for the HUD, so frames keep one size
SWATCH = 11                        # legend colour square


def _as_bgr_uint8(img: np.ndarray) -> np.ndarray:
    img = np.asarray(img)
    if img.dtype != np.uint8:
        raise ValueError(f"images are uint8, got {img.dtype}")
    if img.ndim == 2:
        return cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
    if img.ndim == 3 and img.shape[2] == 3:
        return np.ascontiguousarray(img).copy()
    raise ValueError(f"an image is (H, W) or (H, W, 3), got shape {img.shape}")


def _rgb_to_bgr(colors) -> np.ndarray:
    c = np.asarray(colors, dtype=np.int64).reshape(-1, 3)
    if c.size and (c.min() < 0 or c.max() > 255):
        raise ValueError("colours are RGB triples in 0..255")
    return c[:, ::-1].astype(np.uint8)


def events_image(event_img: np.ndarray, background: np.ndarray | None = None) -> np.ndarray:
    """Signed event image (H, W) -> BGR: ON_BGR / OFF_BGR where events are, elsewhere dark grey
    or the background (an APS frame, grey (H, W) or BGR (H, W, 3); resized to (H, W) if the
    sensor and frame sizes differ)."""
    ev = np.asarray(event_img)
    if ev.ndim != 2:
        raise ValueError(f"an event image is (H, W), got shape {ev.shape}")
    h, w = ev.shape
    if background is None:
        out = np.empty((h, w, 3), np.uint8)
        out[:] = BACKGROUND_BGR
    else:
        out = _as_bgr_uint8(background)
        if out.shape[:2] != (h, w):
            out = cv2.resize(out, (w, h), interpolation=cv2.INTER_AREA)
    out[ev > 0] = ON_BGR
    out[ev < 0] = OFF_BGR
    return out


def segmentation_overlay(base: np.ndarray, labels: np.ndarray, colors, alpha: float = 0.5,
                         ignore: int = 255) -> np.ndarray:
    """Blend class colours (RGB list, one per class id) into `base` with opacity `alpha`:
    out = round((1 - alpha) * base + alpha * colour); pixels labelled `ignore` or with an id
    that has no colour are copied unchanged."""
    img = _as_bgr_uint8(base)
    labels = np.asarray(labels)
    if labels.shape != img.shape[:2]:
        raise ValueError(f"labels {labels.shape} do not match the image {img.shape[:2]}")
    alpha = float(np.clip(alpha, 0.0, 1.0))
    palette = _rgb_to_bgr(colors)
    mask = (labels != ignore) & (labels < len(palette))
    if not mask.any() or alpha == 0.0:
        return img
    color = palette[labels[mask].astype(np.intp)].astype(np.float32)
    blend = (1.0 - alpha) * img[mask].astype(np.float32) + alpha * color
    img[mask] = np.rint(blend).astype(np.uint8)
    return img


def _text(img, s: str, x: int, y: int, color=TEXT_BGR) -> None:
    """Draw one text line whose top is at y (in place: callers own `img`)."""
    cv2.putText(img, s, (x, y + LINE_H - 5), FONT, FONT_SCALE, color, 1, cv2.LINE_AA)


def _fit(s: str, max_w: int) -> str:
    """Truncate `s` with '..' so it fits in max_w pixels."""
    if cv2.getTextSize(s, FONT, FONT_SCALE, 1)[0][0] <= max_w:
        return s
    while s and cv2.getTextSize(s + "..", FONT, FONT_SCALE, 1)[0][0] > max_w:
        s = s[:-1]
    return s + ".."


def text_width(s: str) -> int:
    return cv2.getTextSize(s, FONT, FONT_SCALE, 1)[0][0]


def legend(img: np.ndarray, classes, colors, origin=(PAD, PAD), width: int | None = None
           ) -> np.ndarray:
    """A box listing each class as a colour swatch (exactly its colour) and its name."""
    out = _as_bgr_uint8(img)
    x0, y0 = origin
    width = width or (SWATCH + 6 + max((text_width(c) for c in classes), default=0) + 2 * 4)
    h = legend_height(len(classes))
    cv2.rectangle(out, (x0, y0), (x0 + width - 1, y0 + h - 1), DIM_TEXT_BGR, 1)
    palette = _rgb_to_bgr(colors)
    for i, name in enumerate(classes):
        y = y0 + 4 + i * LINE_H
        if i < len(palette):
            sy = y + (LINE_H - SWATCH) // 2
            out[sy:sy + SWATCH, x0 + 4:x0 + 4 + SWATCH] = palette[i]
        _text(out, _fit(str(name), width - SWATCH - 14), x0 + SWATCH + 10, y)
    return out


def legend_height(n_classes: int) -> int:
    return n_classes * LINE_H + 8


def topk_labels(img: np.ndarray, classes, ids, probs, origin=(PAD, PAD),
                width: int = PANEL_W - 2 * PAD) -> np.ndarray:
    """Classification result: one line per (id, probability), best first, each with a bar
    whose length is the probability."""
    out = _as_bgr_uint8(img)
    x0, y0 = origin
    for i, (cid, p) in enumerate(zip(np.asarray(ids).tolist(), np.asarray(probs).tolist())):
        y = y0 + i * LINE_H
        name = classes[cid] if 0 <= cid < len(classes) else f"class {cid}"
        bar = int(round(max(0.0, min(1.0, p)) * width))
        cv2.rectangle(out, (x0, y + 2), (x0 + max(bar, 1) - 1, y + LINE_H - 3),
                      (90, 70, 40) if i else (150, 110, 40), -1)
        _text(out, _fit(f"{name} {100 * p:.1f}%", width - 4), x0 + 3, y,
              TEXT_BGR if i == 0 else DIM_TEXT_BGR)
    return out


def hud(img: np.ndarray, lines, origin=(PAD, PAD), width: int = PANEL_W - 2 * PAD
        ) -> np.ndarray:
    """Text lines. `lines` is a dict (drawn as "key: value"), or a list whose items are str,
    (str, bgr) or (str, bgr, "badge"): a badge is dark text on a filled box of that colour."""
    out = _as_bgr_uint8(img)
    if isinstance(lines, dict):
        lines = [f"{k}: {v}" for k, v in lines.items()]
    x0, y0 = origin
    for i, item in enumerate(lines):
        text, color, style = (item, TEXT_BGR, "") if isinstance(item, str) else \
            (tuple(item) + ("",))[:3]
        y = y0 + i * LINE_H
        text = _fit(str(text), width - 6)
        if style == "badge":
            cv2.rectangle(out, (x0, y + 1), (x0 + text_width(text) + 6, y + LINE_H - 2),
                          color, -1)
            _text(out, text, x0 + 3, y, WARN_TEXT_BGR)
        else:
            _text(out, text, x0, y, color)
    return out


def hud_lines(*, source: str = "", events: int | None = None, window_us: int | None = None,
              model: str = "", trained: bool | None = None, device: str = "",
              fps: float | None = None, latency_ms: dict | None = None,
              dropped: int | None = None, extra=()) -> list:
    """The viewer's standard HUD: source, event rate (over the window's source time), window
    length, model (an UNTRAINED badge when trained is False), device, drawn FPS, end-to-end
    latency p50/p99 (a dict from LatencyRecorder.summary; {} shows "latency -") and dropped
    predictions. Values left as None are left out."""
    lines: list = []
    if source:
        lines.append(f"source {source}")
    if events is not None:
        rate = f", {_rate(events * 1e6 / window_us)}" if window_us else ""
        lines.append(f"events {events}{rate}")
    if window_us:
        lines.append(f"window {window_us / 1000:g} ms")
    if model:
        lines.append(f"model {model}")
    if trained is False:
        lines.append(("UNTRAINED", WARN_BGR, "badge"))
    if device:
        lines.append(f"device {device}")
    if fps is not None:
        lines.append(f"{fps:.1f} FPS")
    if latency_ms is not None:
        lines.append(f"latency p50 {latency_ms['p50']:.1f} p99 {latency_ms['p99']:.1f} ms"
                     if latency_ms.get("count") else "latency -")
    if dropped is not None:
        lines.append(f"dropped {dropped}")
    lines.extend(extra)
    return lines


def _rate(hz: float) -> str:
    return f"{hz / 1e6:.2f} Mev/s" if hz >= 1e5 else f"{hz / 1e3:.1f} kev/s"


def image_size(height: int, width: int, scale: float) -> tuple[int, int]:
    """(h, w) of the sensor image inside a composed frame."""
    return max(1, int(round(height * scale))), max(1, int(round(width * scale)))


def upscale(img: np.ndarray, scale: float) -> np.ndarray:
    """Nearest-neighbour resize by `scale` (integer scales repeat each pixel exactly)."""
    h, w = img.shape[:2]
    nh, nw = image_size(h, w, scale)
    if (nh, nw) == (h, w):
        return img.copy()
    if float(scale).is_integer():
        k = int(scale)
        return np.ascontiguousarray(np.repeat(np.repeat(img, k, axis=0), k, axis=1))
    return cv2.resize(img, (nw, nh), interpolation=cv2.INTER_NEAREST_EXACT)


def compose(event_img: np.ndarray, *, labels: np.ndarray | None = None, classes=(), colors=(),
            alpha: float = 0.5, topk: tuple | None = None, background: np.ndarray | None = None,
            status: list | dict | None = None, scale: float = 2.0, overlay: bool = True,
            panel_w: int = PANEL_W, hud_rows: int = HUD_ROWS) -> np.ndarray:
    """The viewer frame of one prediction (or one plain window: no labels, no topk).

    labels: segmentation labels (H, W) drawn with `colors` at `alpha` (when `overlay`);
    topk: (ids, probs) of a classification; background: APS frame under the events;
    status: HUD lines for `hud()`, given at least `hud_rows` rows of the panel (the legend and
    top-k labels go below them), so the frame size does not change with the HUD's content.
    Layout in the module comment.
    """
    base = events_image(event_img, background)
    if labels is not None and overlay:
        base = segmentation_overlay(base, labels, colors, alpha)
    img = upscale(base, scale)
    ih, iw = img.shape[:2]
    inner = panel_w - 2 * PAD
    hud_items = list(status.items()) if isinstance(status, dict) else list(status or [])
    panel_h = PAD + (max(len(hud_items), hud_rows) if hud_items else 0) * LINE_H
    if labels is not None and len(classes):
        legend_y = panel_h + PAD
        panel_h = legend_y + legend_height(len(classes))
    if topk is not None:
        topk_y = panel_h + PAD
        panel_h = topk_y + len(np.asarray(topk[0])) * LINE_H
    h = max(ih, panel_h + PAD)
    h += h % 2
    w = iw + panel_w
    w += w % 2
    frame = np.empty((h, w, 3), np.uint8)
    frame[:] = PANEL_BGR
    frame[:ih, :iw] = img
    panel = frame[:, iw:iw + panel_w]
    if hud_items:
        panel = hud(panel, status, (PAD, PAD), inner)
    if labels is not None and len(classes):
        panel = legend(panel, classes, colors, (PAD, legend_y), inner)
    if topk is not None:
        panel = topk_labels(panel, classes, topk[0], topk[1], (PAD, topk_y), inner)
    frame[:, iw:iw + panel_w] = panel
    return frame
