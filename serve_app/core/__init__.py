"""The base layer: configuration, constants, OpenAI error types, the payloads the two
deployments exchange, and the default model. Imports nothing else of the service."""
