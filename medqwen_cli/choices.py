"""The fixed choices of the CLI's options, importable without pydantic, yaml or torch.

The schemas keep their own `Literal[...]` types (a type checker cannot read a Literal built from
a tuple); tests/test_recipe.py checks that each Literal lists exactly these values.
"""

from __future__ import annotations

# adapter.method / init-experts --method (see adapters/config.py for what each one is)
METHODS: tuple[str, ...] = ("sslora", "moelora", "lora", "pissa")
# eval.scoring / evaluate --scoring: score every candidate answer, or generate and parse
SCORINGS: tuple[str, ...] = ("likelihood", "generate")
