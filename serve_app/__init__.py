"""vLLM behind Ray Serve, speaking the OpenAI API: configuration, app builder and CLI."""
