"""How CUDA computes "fp32" convolutions and matrix products: strict IEEE fp32 or TF32.

    set_fp32_math("ieee")      # strict fp32 (what a CPU computes, up to summation order)
    set_fp32_math("tf32")      # TF32 tensor cores on Ampere and later: fp32 storage, a 10-bit
                               # mantissa inside the products (about 1e-3 relative), much faster
    current_fp32_math()        # "ieee" | "tf32" | "mixed" (torch's own default: TF32 convs,
                               # IEEE matmuls)

torch's defaults differ per operation: cuDNN convolutions may use TF32, cuBLAS matmuls may not.
So "fp32" on CUDA silently means TF32 for a convolutional network unless someone says
otherwise; evstream always says (the predictor's `fp32_math`, the trainer's `fp32_math`) and
reports which. The settings are process-wide; they change nothing on CPU.

torch 2.9 added a second interface (`torch.backends.*.fp32_precision`); once it is used, the
older `allow_tf32` getters raise (torch 2.13: "a mix of the legacy and new APIs"), and other code
still reads them. Both interfaces stay consistent when only the older setters are used, so this
module uses those and nothing else.
"""

from __future__ import annotations

import torch

from evstream.errors import EvstreamError

FP32_MATH = ("ieee", "tf32")


def check_fp32_math(mode: str, what: str = "fp32_math") -> str:
    if mode not in FP32_MATH:
        raise EvstreamError(f"{what} {mode!r}: expected ieee (strict fp32) or tf32")
    return mode


def set_fp32_math(mode: str) -> None:
    """Process-wide: CUDA convolutions and matmuls in strict fp32 ("ieee") or TF32 ("tf32")."""
    tf32 = check_fp32_math(mode) == "tf32"
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32


def current_fp32_math() -> str:
    conv, matmul = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    if conv and matmul:
        return "tf32"
    return "ieee" if not conv and not matmul else "mixed"
