"""Serving benchmarks and experiments against running stacks (ours and bare vLLM)."""
