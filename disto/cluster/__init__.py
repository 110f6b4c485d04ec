"""Clusters from a driver's side: join a running one (:func:`connect`), start one on this host
(:class:`LocalCluster`), and the token helpers they share with the command line."""
from .cluster import Cluster, NodeHandle, connect
from .local import LocalCluster
from .token import new_token, read_token_file, resolve_token, write_token_file

__all__ = ["Cluster", "NodeHandle", "connect", "LocalCluster", "new_token", "read_token_file", "resolve_token",
           "write_token_file"]
