"""Context-length budgeting of prompts and completions."""

import pytest

from deployments.errors import OpenAIError
from deployments.prompts import resolve_max_tokens


def test_requested_budget_that_fits_is_kept() -> None:
    assert resolve_max_tokens(10, 20, 100, "messages") == 20


def test_missing_budget_fills_the_rest_of_the_context() -> None:
    assert resolve_max_tokens(30, None, 100, "messages") == 70


def test_budget_beyond_the_context_names_max_tokens() -> None:
    with pytest.raises(OpenAIError) as info:
        resolve_max_tokens(90, 20, 100, "messages")
    assert (info.value.status_code, info.value.param) == (400, "max_tokens")
    assert info.value.code == "context_length_exceeded"
    assert "110 tokens" in info.value.message


def test_prompt_filling_the_context_names_the_prompt() -> None:
    with pytest.raises(OpenAIError) as info:
        resolve_max_tokens(100, None, 100, "prompt")
    assert (info.value.status_code, info.value.param) == (400, "prompt")
