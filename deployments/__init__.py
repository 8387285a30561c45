"""Ray Serve deployments: the vLLM engine server and the OpenAI ingress."""
