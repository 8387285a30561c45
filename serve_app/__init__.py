"""The service package: `core` (base layer), `observability`, `engine` (vLLM side), `api`
(OpenAI side) and `runtime` (CLI, runner, entrypoint). `deployments` binds them into Ray Serve
deployments; docs/architecture.md draws the layers."""
