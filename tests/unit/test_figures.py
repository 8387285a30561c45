"""Every measured figure in README.md and docs/*.md names the committed result it comes from,
and equals that result as printed.

A figure is marked by an HTML comment right after it (and its unit), invisible once rendered:

    198 tok/s <!-- result: benchmarks/results/<run>/sweep.json#/bare/levels/0/output_throughput -->

After `#` comes a JSON pointer (RFC 6901) into the file, in its URI-fragment form (a space in
a key is `%20`). A page may name a file once,
`<!-- result-file run5: benchmarks/results/.../sweep.json -->`, and then mark its figures
`<!-- result: run5#/... -->`. The printed number must equal the value rounded half-up to the
decimals printed; spaces group thousands (`6 037`), and a figure printed with `%` is the
value x 100.
"""

import json
import re
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from functools import cache
from pathlib import Path
from urllib.parse import unquote

import pytest

REPO = Path(__file__).resolve().parents[2]
RESULTS = REPO / "benchmarks" / "results"
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
MARKER = re.compile(r"<!-- result: (?P<source>[^#\s]+)#(?P<pointer>\S*) -->")
RESULT_FILE = re.compile(r"<!-- result-file (?P<name>[\w-]+): (?P<path>\S+) -->")
# The number right before a marker: an optional sign after a space or "(", digits grouped by
# spaces, decimals, then at most one unit word (`ms`, `tok/s`, `%`, the times sign).
FIGURE = re.compile(
    r"(?:(?<=[\s(])(?P<sign>[-+]))?(?<![\w.])"
    r"(?P<number>\d{1,3}(?: \d{3})+(?:\.\d+)?|\d+(?:\.\d+)?)"
    r"\s*(?P<unit>[^\s\d<>()|]*)\s*$"
)


@dataclass(frozen=True)
class Figure:
    """One marked figure: where it is printed, what it says, and what it names."""

    page: Path
    line: int
    printed: str
    unit: str
    result: Path
    pointer: str

    def __str__(self) -> str:
        return f"{self.page.relative_to(REPO)}:{self.line}"


def marked_figures(page: Path) -> list[Figure]:
    """Every marker of a page with the figure printed before it (`printed` empty if none)."""
    text = page.read_text()
    files = {m["name"]: m["path"] for m in RESULT_FILE.finditer(text)}
    figures, previous_end = [], 0
    for marker in MARKER.finditer(text):
        before = FIGURE.search(text[previous_end : marker.start()])
        previous_end = marker.end()
        printed = f"{before['sign'] or ''}{before['number']}" if before else ""
        figures.append(
            Figure(
                page=page,
                line=text.count("\n", 0, marker.start()) + 1,
                printed=printed.replace(" ", ""),
                unit=before["unit"] if before else "",
                result=REPO / files.get(marker["source"], marker["source"]),
                pointer=marker["pointer"],
            )
        )
    return figures


ALL_FIGURES = [figure for page in PAGES for figure in marked_figures(page)]


@cache
def load(result: Path) -> object:
    return json.loads(result.read_text())


def resolve(document: object, pointer: str) -> object:
    """The value a JSON pointer names (percent-decoded, then `~1` is `/`, `~0` is `~`)."""
    for token in pointer.split("/")[1:]:
        token = unquote(token).replace("~1", "/").replace("~0", "~")
        document = document[int(token)] if isinstance(document, list) else document[token]
    return document


def as_printed(value: float, printed: str) -> Decimal:
    """`value` rounded half-up to as many decimals as `printed` has."""
    places = Decimal(printed).as_tuple().exponent
    return Decimal(str(value)).quantize(Decimal(1).scaleb(places), rounding=ROUND_HALF_UP)


def test_the_pages_mark_their_figures() -> None:
    # Guards the scan: the front page and the performance page quote measured figures.
    pages = {figure.page.name for figure in ALL_FIGURES}
    assert {"README.md", "performance.md", "reliability.md", "walkthrough.md"} <= pages


@pytest.mark.parametrize("figure", ALL_FIGURES, ids=str)
def test_every_marker_names_a_committed_result_file(figure: Figure) -> None:
    assert figure.result.is_file(), f"{figure}: no {figure.result}"
    assert figure.result.is_relative_to(RESULTS), f"{figure}: not under benchmarks/results/"


@pytest.mark.parametrize("figure", ALL_FIGURES, ids=str)
def test_every_marked_figure_equals_its_result_as_printed(figure: Figure) -> None:
    assert figure.printed, f"{figure}: a marker with no figure right before it"
    value = resolve(load(figure.result), figure.pointer)
    assert isinstance(value, int | float), f"{figure}: {figure.pointer} is {value!r}"
    scaled = value * 100 if figure.unit == "%" else value
    assert as_printed(scaled, figure.printed) == Decimal(figure.printed), (
        f"{figure}: printed {figure.printed}{figure.unit}, the result says {value}"
    )


def test_a_pointer_names_keys_with_spaces_percent_encoded_and_escapes_slashes() -> None:
    document = {"engine hung (SIGSTOP)": [{"after_s": 1.5}], "a/b": 2}
    assert resolve(document, "/engine%20hung%20(SIGSTOP)/0/after_s") == 1.5
    assert resolve(document, "/a~1b") == 2
