"""`lrp check` reports: the console lines, JUnit XML (via junitparser), a Markdown summary, and JSON."""

from __future__ import annotations

import io
from pathlib import Path

from lrp_cli import outputs
from lrp_cli.check.runner import Outcome, Prepared

SCHEMA = "lrp-cli/check/1"


def verdict(outcome: Outcome) -> str:
    """Returns PASS or FAIL."""
    return "PASS" if outcome.passed else "FAIL"


def line(outcome: Outcome) -> str:
    """Returns the console line of one (case, input): verdict, case, input, measured values against limits."""
    return f"{verdict(outcome)}  {outcome.case}  {outcome.input}  {outcome.detail()}"


def totals(results: list[tuple[Prepared, list[Outcome]]]) -> tuple[int, int]:
    """Returns (passed, failed) over all outcomes."""
    every = [o for _, outcomes in results for o in outcomes]
    passed = sum(o.passed for o in every)
    return passed, len(every) - passed


def summary_line(results) -> str:
    """Returns the last console line, `N passed, M failed`."""
    passed, failed = totals(results)
    return f"{passed} passed, {failed} failed"


def junit_bytes(results: list[tuple[Prepared, list[Outcome]]]) -> bytes:
    """Returns JUnit XML: one testsuite per spec, one testcase per (case, input), a <failure> when it failed."""
    from junitparser import Failure, JUnitXml, TestCase, TestSuite
    document = JUnitXml("lrp check")
    for prepared, outcomes in results:
        suite = TestSuite(str(prepared.spec.path))
        for outcome in outcomes:
            case = TestCase(f"{outcome.case} [{outcome.input}]", f"{prepared.spec.path.stem}.{outcome.case}",
                            round(outcome.seconds, 6))
            if not outcome.passed:
                failure = Failure(outcome.detail(failed_only=True), "lrp-check")
                failure.text = "\n".join(f"{m.text()}: {'ok' if m.passed else 'FAILED'}" for m in outcome.measures) \
                    or outcome.detail()
                case.result = [failure]
            suite.add_testcase(case)
        suite.update_statistics()
        document.add_testsuite(suite)
    document.update_statistics()
    buffer = io.BytesIO()
    document.write(buffer)
    return buffer.getvalue()


def _cell(text) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def markdown_text(results: list[tuple[Prepared, list[Outcome]]]) -> str:
    """Returns a Markdown summary (a heading with the totals, one table row per (case, input)), failures first,
    each part in run order."""
    rows = ["| result | spec | case | input | measured |", "| --- | --- | --- | --- | --- |"]
    ordered = sorted(((p, o) for p, outcomes in results for o in outcomes), key=lambda row: row[1].passed)
    for prepared, outcome in ordered:  # a stable sort: in run order (spec, then case and input) within each
        rows.append("| " + " | ".join(_cell(v) for v in (
            f"{'✅' if outcome.passed else '❌'} {verdict(outcome)}", prepared.spec.path, outcome.case,
            outcome.input, outcome.detail())) + " |")
    return f"### lrp check: {summary_line(results)}\n\n" + "\n".join(rows) + "\n"


def json_document(results: list[tuple[Prepared, list[Outcome]]]) -> dict:
    """Returns every measured value, limit and verdict, machine-readable (schema lrp-cli/check/1)."""
    passed, failed = totals(results)
    return {"schema": SCHEMA, "passed": passed, "failed": failed, "specs": [{
        "path": str(prepared.spec.path), "model": str(prepared.spec.model), "model_sha256": prepared.model.sha256,
        "results": [{
            "case": o.case, "input": str(o.input), "passed": o.passed, "error": o.error,
            "seconds": round(o.seconds, 6), "evidence": o.evidence or None,
            "measures": [{"name": m.name, "value": m.value, "limit": m.limit, "passed": m.passed}
                         for m in o.measures],
        } for o in outcomes],
    } for prepared, outcomes in results]}


def write_reports(results, junit: Path | None, markdown: Path | None, json_path: Path | None) -> None:
    """Writes the requested report files, all-or-nothing."""
    contents = {}
    if junit is not None:
        contents[junit] = junit_bytes(results)
    if markdown is not None:
        contents[markdown] = markdown_text(results).encode("utf-8")
    if json_path is not None:
        contents[json_path] = outputs.json_bytes(json_document(results))
    outputs.write_all(contents)
