"""Markdown tables for the benchmark scripts (no imports, so that the torch-only scripts can use it too)."""


def markdown(header: list[str], rows: list[list[str]]) -> str:
    """Returns a Markdown table of the header and the rows of cells."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(cells) + " |" for cells in rows])
