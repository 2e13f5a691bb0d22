"""Inference: representation windows -> predictions, in a process of its own.

    predictor.py  Predictor (a batch of (C, H, W) windows -> labels/confidence or top-k at
                  sensor size, CPU or CUDA fast path), check_compatible (model vs pipeline)
    worker.py     worker_stage(cfg, endpoints): the pipeline stage around a Predictor
    device.py     device / precision / CPU-thread choices
"""

from evstream.infer.predictor import Predictor, check_compatible

__all__ = ["Predictor", "check_compatible"]
