"""The streaming plumbing: shared-memory event ring and window slots, time/count windows, the zmq
wire format and socket factory, the control channel, lifeline and telemetry. The stage
processes built on them are in evstream/stages/."""
