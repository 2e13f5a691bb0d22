"""Inference: representation windows -> predictions (the worker process around it is
evstream/stages/worker.py).

    predictor.py  Predictor (a batch of (C, H, W) windows -> labels/confidence or top-k at
                  sensor size, CPU or CUDA fast path), check_compatible (model vs pipeline)
    device.py     device / precision / CPU-thread choices
    backends.py   make_predictor: --backend torch | onnxruntime | auto (the worker's choice)
    onnx_backend.py  OnnxPredictor: the Predictor with the network run by onnxruntime
    onnx_export.py   the network -> ONNX with its model config in the metadata, and back
"""

__all__ = ["Predictor", "check_compatible"]


def __getattr__(name: str):
    # torch is imported with the predictor, when it is used: importing evstream.infer (the
    # launcher does, for backends.check_infer_config) stays cheap
    if name in __all__:
        from evstream.infer import predictor

        return getattr(predictor, name)
    raise AttributeError(f"module 'evstream.infer' has no attribute {name!r}")
