"""Command-line interface: one thin module per command; rendering lives in `_output`."""
