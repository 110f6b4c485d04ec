"""Clusters from a driver's side: join a running one (:func:`connect`), start one on this host
(:class:`LocalCluster`), and the token helpers they share with the command line."""
from .cluster import Cluster, NodeHandle, connect
from .local import LocalCluster
from .inspect import format_stacks
from .token import new_token, read_token_file, resolve_token, token_source, write_token_file

__all__ = ["Cluster", "NodeHandle", "connect", "LocalCluster", "new_token", "read_token_file", "resolve_token",
           "token_source", "write_token_file", "format_stacks"]
