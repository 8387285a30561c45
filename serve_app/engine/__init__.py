"""The engine side: vLLM (the only code that imports it), engine arguments, stream pacing."""
