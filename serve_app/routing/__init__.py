"""Choosing the LLM-server replica of a request."""
