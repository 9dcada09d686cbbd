"""The kernel of a node: requests in, replies out, peer links, supervision; knows no keys or rings."""
