"""ASGI middleware of the ingress: API keys, the request-body cap, HTTP metrics."""
