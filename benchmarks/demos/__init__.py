"""Engine demos of vLLM's optimisations, and the walkthrough that strings them together."""
