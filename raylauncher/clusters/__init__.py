"""Cluster backends: how a job's Ray cluster comes up and, always, goes down."""

from raylauncher.clusters.base import ClusterBackend, ClusterHandle

__all__ = ["ClusterBackend", "ClusterHandle"]
