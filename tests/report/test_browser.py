"""The report in a real browser: headless Chromium opens it offline, it renders (the screenshot is
not blank), the matrix and every figure are in the rendered page, it prints, and the page makes
no request. Skips when no chromium is installed, except in CI (MEDQWEN_REQUIRE_CHROMIUM=1)."""

from __future__ import annotations

import os

import pytest

from medqwen_cli.report.browser import dump_dom, find_chromium, print_pdf, screenshot


@pytest.fixture
def chromium() -> None:
    if find_chromium() is None:
        if os.environ.get("MEDQWEN_REQUIRE_CHROMIUM"):
            raise RuntimeError("MEDQWEN_REQUIRE_CHROMIUM is set but no chromium is on PATH")
        pytest.skip("no chromium on PATH: the browser test needs it (apt-get install chromium)")


def test_detector_sees_a_request_leaving_the_page(chromium, tmp_path):
    page = tmp_path / "leaky.html"
    page.write_text('<p>x</p><img src="http://example.invalid/x.png">', encoding="utf-8")
    assert "http://example.invalid/x.png" in screenshot(page, tmp_path / "leaky.png", 400, 300)


def test_report_renders_offline(chromium, reported_bundle, cli, tmp_path):
    from PIL import Image

    page = tmp_path / "report.html"
    assert cli("report", reported_bundle, "--out", page).code == 0
    png = tmp_path / "report.png"
    requests = screenshot(page, png, 1200, 1800)
    assert [u for u in requests if not u.startswith("file:")] == []
    image = Image.open(png).convert("RGB")
    assert image.size == (1200, 1800)
    small = image.resize((120, 180))
    colours = small.getcolors(120 * 180)  # [(count, (r, g, b))]
    inked = sum(n for n, rgb in colours if sum(rgb) < 720) / (120 * 180)
    assert inked > 0.05 and len(colours) > 50, "the screenshot is (almost) blank"

    dom = dump_dom(page)
    assert 'id="accuracy-matrix"' in dom and dom.count("<svg") == 2
    assert dom.count('class="report-figure"') == 2
    pdf = tmp_path / "report.pdf"
    print_pdf(page, pdf)
    assert pdf.read_bytes()[:5] == b"%PDF-" and pdf.stat().st_size > 10_000
