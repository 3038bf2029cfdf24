"""Regenerate the schema block of docs/recipes.md from the recipe schema."""

from pathlib import Path

from medqwen_cli.recipe import schema_markdown

path = Path(__file__).resolve().parents[1] / "docs" / "recipes.md"
text = path.read_text()
head, rest = text.split("<!-- schema:start -->\n", 1)
tail = rest.split("<!-- schema:end -->", 1)[1]
path.write_text(head + "<!-- schema:start -->\n" + schema_markdown() + "<!-- schema:end -->" + tail)
print(f"updated {path}")
