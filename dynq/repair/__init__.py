"""Convergence in the background: hinted handoff, anti-entropy with Merkle trees."""
