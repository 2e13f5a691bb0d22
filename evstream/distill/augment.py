"""Training-time augmentation of a batch on the device: horizontal flips and translations.

    out = augment(batch, content_hw=(h, w), hflip=True, shift=3, seed=..., slots=...)

Both are decided per GLOBAL batch slot from a generator seeded by the caller with (seed, stage,
iteration), so one process with batch B and W DDP ranks with batch B/W apply the same
augmentation to the same samples (`slots` are this rank's global slot numbers), and a resumed run
repeats exactly what the interrupted one would have done.

- hflip: each slot flips with probability 1/2 the picture part [:h, :w] of "events", "image" and,
  for segmentation, "label" (the padding stays where it is).
- shift: each slot moves its picture by (dy, dx) drawn uniformly from [-shift, shift]; what moves
  in from outside is 0 for events and images (0 is mid-grey for images in [-1, 1] and "no
  event" for event tensors) and 255 (ignore) for label maps; the "valid" mask moves with the
  picture so padding never counts. Used where objects sit anywhere in the frame (N-MNIST's
  saccades shift each digit by a few pixels).

Pure: the input dict's tensors are not modified; a new dict is returned.
"""

from __future__ import annotations

import torch

IGNORE = 255


def _shifted(x: torch.Tensor, dy: int, dx: int, h: int, w: int, fill) -> torch.Tensor:
    """x[..., :h, :w] moved by (dy, dx) inside the picture, `fill` where nothing moved in."""
    out = x.clone()
    pic = out[..., :h, :w]
    pic.fill_(fill)
    ys, yd = (slice(0, h - dy), slice(dy, h)) if dy >= 0 else (slice(-dy, h), slice(0, h + dy))
    xs, xd = (slice(0, w - dx), slice(dx, w)) if dx >= 0 else (slice(-dx, w), slice(0, w + dx))
    pic[..., yd, xd] = x[..., :h, :w][..., ys, xs]
    return out


def augment(batch: dict, *, content_hw: tuple[int, int], hflip: bool, shift: int,
            generator: torch.Generator, slots: torch.Tensor, global_batch: int,
            segmentation: bool) -> dict:
    """The batch with this iteration's flips and shifts applied (see the module doc).

    slots: the global batch positions (int64) of this rank's samples, in order."""
    out = dict(batch)
    if not hflip and shift <= 0:
        return out
    h, w = int(content_hw[0]), int(content_hw[1])
    # draw for every global slot, always in the same order, so ranks agree
    flips = torch.rand(global_batch, generator=generator) < 0.5 if hflip else None
    moves = (torch.randint(-shift, shift + 1, (global_batch, 2), generator=generator)
             if shift > 0 else None)
    keys = [k for k in ("events", "image") if k in out]
    if segmentation and "label" in out:
        keys.append("label")
    if "valid" in out and out["valid"] is not None and moves is not None:
        keys.append("valid")
    for k in keys:
        out[k] = out[k].clone()
    for row, slot in enumerate(slots.tolist()):
        if row >= next(iter(out.values())).shape[0]:
            break
        flip = bool(flips[slot]) if flips is not None else False
        dy, dx = (int(v) for v in moves[slot]) if moves is not None else (0, 0)
        for k in keys:
            x = out[k][row]
            if flip and k != "valid":
                x[..., :h, :w] = x[..., :h, :w].flip(-1)
            if dy or dx:
                fill = IGNORE if k == "label" else (False if k == "valid" else 0)
                out[k][row] = _shifted(x, dy, dx, h, w, fill)
    return out
