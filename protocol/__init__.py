"""hashfed protocol: records, canonical JSON, Merkle logs, signed checkpoints; pure and offline."""
