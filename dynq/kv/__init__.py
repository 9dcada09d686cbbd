"""The data path: client and replica reads and writes, write planning, request coordination."""
