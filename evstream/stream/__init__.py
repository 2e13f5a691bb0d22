"""The streaming plumbing: shared-memory event ring, time/count windows, the zmq wire format,
telemetry, and the stage processes built on them."""
