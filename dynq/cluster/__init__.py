"""Cluster membership: the cluster state (value and owner), gossip, failure detection, transfers."""
