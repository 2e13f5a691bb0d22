"""The pipeline's processes, one module each, in the order the data flows:

    source.py   open a source (file, camera, network, synthetic), pace it, write the event ring;
                frames / IMU / triggers on the `side` endpoint
    window.py   read the ring into time/count windows, compute each window's representation,
                send it (a shared-memory window slot, or a zmq buffer) on `windows`
    worker.py   run the model on the windows (batched across streams), send `predictions`
                (and `publish` them for `evstream view`)
    viewer.py   draw predictions or windows (window, MP4, PNGs)       } the consumer: one of
    sink.py     count them and measure latency (nothing to draw)      } the two

Each is a plain function `*_stage(cfg: PipelineConfig, endpoints: dict)` that makes its own
sockets (stream/sockets.py) and talks to the launcher (evstream/pipeline.py) through
stream/stage.py's control link; the launcher starts it in a `spawn`ed process through
stream/lifeline.py, which imports the module by name. What the stages are built on lives
elsewhere: the ring, slots, wire format and sockets in stream/, the readers in sources/, the
kernels in represent/, the model runner in infer/, the drawing in viewer/.
"""
