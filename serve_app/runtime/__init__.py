"""Running the service: the serve runner, the container entrypoint, Serve config files and
health waits."""
