"""Screenshot of a bundle's audit report for the README, taken as the browser test takes it.

    python scripts/report_screenshot.py BUNDLE docs/img/report.png [--height 1500]

Writes the report to a temporary HTML file, opens it in headless Chromium offline
(medqwen_cli/report/browser.py) and saves the top of the page as a PNG.
"""

import argparse
import sys
import tempfile
from pathlib import Path

from medqwen_cli.bundle import Bundle
from medqwen_cli.report import build_report, render_html
from medqwen_cli.report.browser import screenshot

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("bundle", type=Path)
parser.add_argument("png", type=Path)
parser.add_argument("--width", type=int, default=1100)
parser.add_argument("--height", type=int, default=1500)
args = parser.parse_args()
with tempfile.TemporaryDirectory() as tmp:
    page = Path(tmp) / "report.html"
    page.write_text(render_html(build_report(Bundle.open(args.bundle))), encoding="utf-8")
    leaked = [
        u for u in screenshot(page, args.png, args.width, args.height) if not u.startswith("file:")
    ]
if leaked:
    sys.exit(f"the page made requests: {leaked}")
print(f"wrote {args.png}")
