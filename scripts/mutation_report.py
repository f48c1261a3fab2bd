"""Prints the killed share of mutmut 3's mutants per module (from mutants/*.meta), leaving out the mutants that
docs/mutation.md classifies as equivalent; `--survivors` also lists the surviving non-equivalent ones.

`--only FILE` counts only the mutants named in FILE. `--sample N` instead prints N evenly spaced mutant names
per module (all of them when it has fewer), for `mutmut run NAMES...`: 2 shared cores cannot run all ~1900
mutants in a working session."""

from __future__ import annotations

import json
import re
import sys
from collections import Counter
from pathlib import Path

from mutmut.stats import status_by_exit_code

REPO = Path(__file__).resolve().parents[1]
MODULES = ("cli", "preprocess", "render", "outputs", "batch", "api")
NAME = re.compile(r"`(lrp_cli\.[^`]+__mutmut_\d+)`")


def equivalent_mutants(notes: Path) -> set[str]:
    """Returns the mutant names the notes file lists as equivalent."""
    return set(NAME.findall(notes.read_text(encoding="utf-8"))) if notes.exists() else set()


def all_mutants(mutants: Path, module: str) -> list[str]:
    """Returns every generated mutant name of one module, in source order."""
    meta = mutants / "src" / "lrp_cli" / f"{module}.py.meta"
    return list(json.loads(meta.read_text())["exit_code_by_key"]) if meta.exists() else []


def sample(names: list[str], count: int) -> list[str]:
    """Returns `count` evenly spaced names (all of them when there are fewer)."""
    if len(names) <= count:
        return names
    return [names[int((k + 0.5) * len(names) / count)] for k in range(count)]


def module_results(mutants: Path, module: str) -> dict[str, str]:
    """Returns mutant name -> status for the checked mutants of one module."""
    meta = mutants / "src" / "lrp_cli" / f"{module}.py.meta"
    if not meta.exists():
        return {}
    codes = json.loads(meta.read_text())["exit_code_by_key"]
    return {name: status_by_exit_code[code] for name, code in codes.items() if code is not None}


def main(argv: list[str]) -> None:
    """Prints the per-module table (or a sample of mutant names)."""
    mutants = REPO / "mutants"
    if "--sample" in argv:
        count = int(argv[argv.index("--sample") + 1])
        print("\n".join(name for module in MODULES for name in sample(all_mutants(mutants, module), count)))
        return
    equivalent = equivalent_mutants(REPO / "docs" / "mutation.md")
    only = set(Path(argv[argv.index("--only") + 1]).read_text().split()) if "--only" in argv else None
    print(f"{'module':12s} {'checked':>7s} {'killed':>6s} {'survived':>8s} {'equivalent':>10s} {'killed share':>12s}")
    survivors = []
    for module in MODULES:
        results = {n: s for n, s in module_results(mutants, module).items() if only is None or n in only}
        counts = Counter("killed" if s in ("killed", "timeout") else s for s in results.values())
        alive = [n for n, s in results.items() if s not in ("killed", "timeout")]
        equiv = sum(n in equivalent for n in alive)
        survivors += [n for n in alive if n not in equivalent]
        judged = len(results) - equiv
        share = f"{counts['killed'] / judged:.1%}" if judged else "-"
        print(f"{module:12s} {len(results):7d} {counts['killed']:6d} {len(alive):8d} {equiv:10d} {share:>12s}")
    if "--survivors" in argv:
        print("\n".join(survivors))


if __name__ == "__main__":
    main(sys.argv[1:])
