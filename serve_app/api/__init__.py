"""The OpenAI API side: protocol models, prompt rendering, the LLM server's client, one serving
class per endpoint family, middleware and the FastAPI app. Imports no vLLM."""
