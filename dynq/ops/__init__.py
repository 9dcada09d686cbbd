"""Process and operator plumbing: metrics, logging, systemd notification."""
