"""Protobuf messages shared by master and slave (generated code; see scripts/gen_protos.py)."""

from protos import cluster_pb2

__all__ = ["cluster_pb2"]
