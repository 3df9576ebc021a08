"""dge-explain: run, explain and benchmark Dynamic Grained Encoder vision transformers."""

__version__ = "0.1.0"
