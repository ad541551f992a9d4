"""index.html in headless Chromium: renders without console errors or network requests, on desktop,
on a phone and in print. A screenshot is kept in test-artifacts/ for people to look at."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from fixtures.browser import MISSING, Chromium, PageLoad, chromium_path
from fixtures.studies import make_study
from seratio.records import load_study
from seratio.report.writer import write_report
from seratio.store import Patience

PATIENCE = Patience(seconds=30)

ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"

pytestmark = pytest.mark.browser


def _page_requests(load: PageLoad, page: str) -> list[str]:
    """Requests other than the page itself and its inlined data: images."""
    return [url for url in load.requests if url != page and not url.startswith("data:")]


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Chromium]:
    if chromium_path() is None:
        pytest.fail(MISSING)
    with Chromium(tmp_path_factory.mktemp("chromium-profile")) as chromium:
        yield chromium


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("html")
    fixture = make_study(root / "study", seeds=3, problems=True)
    write_report(load_study(fixture.name, fixture.storage, PATIENCE), root / "report")
    return root / "report" / "index.html"


def test_the_checker_sees_errors_and_requests(browser: Chromium, tmp_path: Path) -> None:
    """A control page: without this, a silent harness would pass any report."""
    bad = tmp_path / "bad.html"
    bad.write_text('<html><body><img src="http://127.0.0.1:9/x.png"><script>console.error("boom")</script>'
                   "</body></html>")
    load = browser.load(bad.as_uri(), 800, 600)
    assert "http://127.0.0.1:9/x.png" in _page_requests(load, bad.as_uri())
    assert "boom" in load.console


def test_report_renders_offline_without_errors(browser: Chromium, report: Path) -> None:
    load = browser.load(report.as_uri(), 1280, 900)
    assert load.console == []
    assert _page_requests(load, report.as_uri()) == []
    images = browser.evaluate("Array.from(document.images).map(i => [i.complete, i.naturalWidth])")
    pngs = list(report.parent.glob("*.png"))
    assert len(images) == len(pngs) == 5
    assert all(complete and width > 300 for complete, width in images)
    assert browser.evaluate("document.querySelectorAll('tr.winner').length") == 4
    assert "CUDA out of memory" in browser.evaluate("document.body.innerText")
    ARTIFACTS.mkdir(exist_ok=True)
    browser.screenshot(ARTIFACTS / "report.png")
    assert (ARTIFACTS / "report.png").stat().st_size > 50_000


def test_report_fits_a_phone_screen(browser: Chromium, report: Path) -> None:
    load = browser.load(report.as_uri(), 390, 844, mobile=True)
    assert load.console == []
    page_width, viewport = browser.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
    assert page_width <= viewport  # wide tables scroll inside their own box, not the page
    widest_image = browser.evaluate(
        "Math.max(...Array.from(document.images).map(i => i.getBoundingClientRect().right))")
    assert widest_image <= viewport
    browser.screenshot(ARTIFACTS / "report-phone.png")


def test_report_prints(browser: Chromium, report: Path) -> None:
    browser.load(report.as_uri(), 1280, 900)
    pdf = browser.print_pdf()
    assert pdf.startswith(b"%PDF")
    assert len(re.findall(rb"/Type\s*/Page\b", pdf)) >= 3  # several pages, not one clipped screen
    assert len(pdf) > 100_000  # tables and all figures made it into print
