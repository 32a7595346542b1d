"""SpecGrove: exact speculative decoding (chain, Sequoia trees, AdaEDL) served over gRPC."""

__version__ = "0.1.0"
