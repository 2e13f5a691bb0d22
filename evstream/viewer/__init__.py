"""The viewer: overlay drawing (overlay.py, pure functions on arrays), the window / video loop
(app.py: `Viewer`, used by the pipeline's viewer process in evstream/stages/viewer.py, and
`run_viewer` for `evstream view`) and its file outputs (video.py). Importing this package loads
nothing heavy; import the modules you need."""
