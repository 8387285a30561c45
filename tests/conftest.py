"""Markers by folder: tests/integration starts the real stack; tests/gpu needs CUDA."""

import pytest


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        path = str(item.path)
        if "/integration/" in path:
            item.add_marker(pytest.mark.integration)
        elif "/gpu/" in path:
            item.add_marker(pytest.mark.gpu)
