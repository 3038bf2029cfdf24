"""Open a report in a local headless Chromium, offline: a screenshot, a PDF, the rendered DOM,
and every request the page made. The report's browser test and the README's screenshot use it.

Chromium runs with DNS mapped to nothing (`--host-resolver-rules`), so nothing can leave the
machine, and writes a net log; a request the page itself starts has an opaque (`null`) initiator
there, while Chromium's own background requests have none ("not an origin"). No Python package
is needed: only the `chromium` executable (Debian: `apt-get install chromium`).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from pathlib import Path

NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
    "--disable-extensions", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--host-resolver-rules=MAP * ~NOTFOUND", "--force-color-profile=srgb",
)  # fmt: skip


def find_chromium() -> str | None:
    """The path of a Chromium (or Chrome) executable on PATH, or None."""
    return next((found for name in NAMES if (found := shutil.which(name))), None)


def _run(page: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    exe = find_chromium()
    if exe is None:
        raise FileNotFoundError("no chromium on PATH (Debian: apt-get install chromium)")
    with tempfile.TemporaryDirectory(prefix="medqwen-chromium-") as profile:
        return subprocess.run(
            [exe, *FLAGS, f"--user-data-dir={profile}", *args, page.resolve().as_uri()],
            capture_output=True, text=True, timeout=timeout, check=True,
        )  # fmt: skip


def screenshot(page: Path, png: Path, width: int = 1200, height: int = 1600) -> list[str]:
    """Render `page` into `png` (`width` x `height` CSS pixels, from the top); returns the URLs
    of the requests the page made (file: URLs included)."""
    with tempfile.TemporaryDirectory(prefix="medqwen-netlog-") as tmp:
        log = Path(tmp) / "net.json"
        _run(page, f"--screenshot={png}", f"--window-size={width},{height}",
             f"--log-net-log={log}")  # fmt: skip
        return page_requests(log)


def print_pdf(page: Path, pdf: Path) -> None:
    """Print `page` to `pdf` as the browser's print dialog would (A4, per the page's CSS)."""
    _run(page, f"--print-to-pdf={pdf}", "--no-pdf-header-footer")


def dump_dom(page: Path) -> str:
    """The page's DOM after Chromium parsed and laid it out, serialized."""
    return _run(page, "--dump-dom").stdout


def page_requests(net_log: Path) -> list[str]:
    """URLs of the requests the page started (its initiator is an origin, not the browser)."""
    events = json.loads(net_log.read_text(encoding="utf-8")).get("events", [])
    return sorted({
        e["params"]["url"] for e in events
        if "url" in e.get("params", {}) and "initiator" in e["params"]
        and e["params"]["initiator"] != "not an origin"
    })  # fmt: skip
