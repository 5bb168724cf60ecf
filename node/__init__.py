"""hashfed node: storage, sequencer, HTTP server, sync client and CLI built on protocol/."""

__version__ = "0.1.0"
