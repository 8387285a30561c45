"""One serving class per endpoint family, on a shared base: validation, fan-out, SSE framing."""
