"""dynq: a Dynamo-style distributed key-value store. This package is the node and the admin CLI;
the client library is the separate ``dynq_client`` distribution."""

__version__ = "0.1.0"
