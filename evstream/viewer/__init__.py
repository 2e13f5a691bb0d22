"""The viewer: overlay drawing (overlay.py, pure functions on arrays), the window / video loop
(app.py: `viewer_stage` for the pipeline, `run_viewer` for `evstream view`) and its file outputs
(video.py). Importing this package loads nothing heavy; import the modules you need."""
