"""The Ray Serve deployments (LLMServer, OpenAIIngress) and the app builder that binds them."""
