"""`medqwen report`: one self-contained audit report per bundle, as HTML or JSON.

data      `build_report`: the report as data (the JSON schema, docs/report.md)
html      `render_html`: the page (inline CSS and SVG, no script, no external link)
sections  the page's body sections; svg: hand-drawn line charts; style: the stylesheet
"""

from medqwen_cli.report.data import REPORT_SCHEMA, build_report
from medqwen_cli.report.html import render_html

__all__ = ["REPORT_SCHEMA", "build_report", "render_html"]
