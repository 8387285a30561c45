"""A mutation check of the request translation and the error mapping: each hand-written
mutation (a dropped sampling field, a wrong status, type, code or param) is applied to a copy
of the source, and the unit tests that specify the behaviour must fail under it.

Run as a script, this module is the runner: it imports the tests once (for vLLM, Ray and the
other libraries they import, the slow part), forgets the project's own modules, then forks a
child per mutation that runs pytest on a mutated copy of the repository: about a second a
mutation, not a fresh interpreter's imports.
"""

import gc
import importlib
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("serve_app", "deployments", "tests")
TESTS_FAILED = 1  # pytest's exit code when tests ran and some failed (not a collection error)
BASELINE = "unmutated"

SAMPLING_TEST = (
    "tests/unit/test_serving.py::test_every_sampling_field_reaches_the_engine_with_its_value"
)
ERRORS_TEST = "tests/unit/test_errors.py"
ENGINE_REQUEST = "serve_app/vllm_compat.py"
ERRORS = "serve_app/core/errors.py"
COLLECT = "    collect = params.output_kind == RequestOutputKind.FINAL_ONLY\n"


@dataclass(frozen=True)
class Mutation:
    """`old` replaced by `new` in the file at `path`; `tests` must fail under it."""

    name: str
    path: str
    old: str
    new: str
    tests: str


def dropped_sampling_field(field: str, default: object) -> Mutation:
    """The engine request loses `field` on its way to the engine (set back to its default)."""
    new = f"    params = params.clone()\n    params.{field} = {default!r}\n{COLLECT}"
    return Mutation(f"drop {field}", ENGINE_REQUEST, COLLECT, new, SAMPLING_TEST)


def wrong_error(name: str, old: str, new: str) -> Mutation:
    return Mutation(name, ERRORS, old, new, ERRORS_TEST)


MUTATIONS = [
    dropped_sampling_field("presence_penalty", 0.0),
    dropped_sampling_field("frequency_penalty", 0.0),
    dropped_sampling_field("min_p", 0.0),
    dropped_sampling_field("repetition_penalty", 1.0),
    dropped_sampling_field("min_tokens", 0),
    wrong_error(
        "vLLM's 503 as a 500 server_error",
        "        return service_unavailable(message, param=param)\n",
        "        return internal_error(message)\n",
    ),
    wrong_error(
        "vLLM's unknown model without its code",
        "return OpenAIError(message, status_code, INVALID_REQUEST, param, MODEL_NOT_FOUND_CODE)",
        "return OpenAIError(message, status_code, INVALID_REQUEST, param)",
    ),
    wrong_error(
        "vLLM's 501 as a server_error",
        "not_implemented = status_code == HTTPStatus.NOT_IMPLEMENTED",
        "not_implemented = False",
    ),
    wrong_error(
        "context length exceeded without its code",
        "code = CONTEXT_LENGTH_EXCEEDED_CODE if context else None",
        "code = None",
    ),
    wrong_error(
        "vLLM's 404 as an invalid_request_error",
        "    error_type = NOT_FOUND if status_code == HTTPStatus.NOT_FOUND else INVALID_REQUEST\n"
        "    return OpenAIError(message, status_code, error_type, param, code)",
        "    return OpenAIError(message, status_code, INVALID_REQUEST, param, code)",
    ),
    wrong_error(
        "unknown model as a 400",
        '        HTTPStatus.NOT_FOUND,\n        INVALID_REQUEST,\n        "model",',
        '        HTTPStatus.BAD_REQUEST,\n        INVALID_REQUEST,\n        "model",',
    ),
    wrong_error(
        "503 without Retry-After",
        "message, HTTPStatus.SERVICE_UNAVAILABLE, SERVICE_UNAVAILABLE, param, code, RETRY_AFTER_S",
        "message, HTTPStatus.SERVICE_UNAVAILABLE, SERVICE_UNAVAILABLE, param, code",
    ),
    wrong_error(
        "missing API key as a 403",
        "        HTTPStatus.UNAUTHORIZED,\n",
        "        HTTPStatus.FORBIDDEN,\n",
    ),
    wrong_error(
        "body too large as a 400",
        "        HTTPStatus.REQUEST_ENTITY_TOO_LARGE,\n",
        "        HTTPStatus.BAD_REQUEST,\n",
    ),
    wrong_error(
        "rate limit as a 503",
        "        HTTPStatus.TOO_MANY_REQUESTS,\n",
        "        HTTPStatus.SERVICE_UNAVAILABLE,\n",
    ),
    wrong_error(
        "validation error without its param",
        "if param else message, param)",
        "if param else message)",
    ),
]


def test_every_mutation_fails_the_tests_that_specify_it(tmp_path: Path) -> None:
    run = subprocess.run(
        [sys.executable, __file__, str(tmp_path)], capture_output=True, text=True, timeout=600
    )
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    codes = json.loads(run.stdout.splitlines()[-1])
    assert codes.pop(BASELINE) == 0, run.stdout[-8000:]
    survivors = [name for name, code in codes.items() if code != TESTS_FAILED]
    assert not survivors, f"no test failed under: {survivors}\n{run.stdout[-8000:]}"
    assert list(codes) == [mutation.name for mutation in MUTATIONS]


def mutated_copy(mutation: Mutation | None, folder: Path) -> None:
    """The repository's code and tests in `folder`, with `mutation` applied."""
    for package in PACKAGES:
        shutil.copytree(REPO / package, folder / package, ignore=shutil.ignore_patterns("*.pyc"))
    shutil.copy(REPO / "pyproject.toml", folder)
    if mutation is not None:
        target = folder / mutation.path
        text = target.read_text()
        assert text.count(mutation.old) == 1, f"{mutation.name}: not found once in {mutation.path}"
        target.write_text(text.replace(mutation.old, mutation.new))


def pytest_exit_code(mutation: Mutation | None, tests: list[str], folder: Path) -> int:
    """pytest's exit code for `tests` on a mutated copy, run in a forked child (the heavy
    imports already done)."""
    mutated_copy(mutation, folder)
    sys.stdout.flush()
    child = os.fork()
    if child == 0:
        import pytest

        os.chdir(folder)
        sys.path.insert(0, str(folder))
        os.environ["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"  # none is needed; loading them is slow
        os._exit(pytest.main(["-q", "-x", "-p", "no:cacheprovider", *tests]))
    _, status = os.waitpid(child, 0)
    return os.waitstatus_to_exitcode(status)


def import_libraries(tests: list[str]) -> None:
    """Import the test modules, with every library they use, then forget the project's own
    modules: the children import those from their mutated copies."""
    sys.path.insert(0, str(REPO))
    for test in tests:
        importlib.import_module(test.split("::")[0].removesuffix(".py").replace("/", "."))
    sys.path.remove(str(REPO))
    for name in [name for name in sys.modules if name.split(".")[0] in PACKAGES]:
        del sys.modules[name]
    gc.freeze()  # the libraries' objects: pytest's garbage collections in the children skip them


def main(scratch: Path) -> None:
    all_tests = sorted({mutation.tests for mutation in MUTATIONS})
    import_libraries(all_tests)
    codes = {BASELINE: pytest_exit_code(None, all_tests, scratch / "baseline")}
    for index, mutation in enumerate(MUTATIONS):
        print(f"\n=== mutation: {mutation.name}", flush=True)
        codes[mutation.name] = pytest_exit_code(mutation, [mutation.tests], scratch / str(index))
    gc.unfreeze()
    print(json.dumps(codes))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
