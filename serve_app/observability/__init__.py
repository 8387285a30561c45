"""What the service exports: every metric definition, the node's Prometheus text, GPU memory."""
