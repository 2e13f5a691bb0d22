"""Inference: representation windows -> predictions (the worker process around it is
evstream/stages/worker.py).

    predictor.py  Predictor (a batch of (C, H, W) windows -> labels/confidence or top-k at
                  sensor size, CPU or CUDA fast path), check_compatible (model vs pipeline)
    device.py     device / precision / CPU-thread choices
    backends.py   make_predictor: --backend torch | onnxruntime | auto (the worker's choice)
    onnx_backend.py  OnnxPredictor: the Predictor with the network run by onnxruntime
    onnx_export.py   the network -> ONNX with its model config in the metadata, and back
"""

from evstream.infer.predictor import Predictor, check_compatible

__all__ = ["Predictor", "check_compatible"]
