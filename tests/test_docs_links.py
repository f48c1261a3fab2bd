"""README.md and docs/*.md: every relative link and image resolves (a file in the repository, an `#anchor` a heading
of its page, GitHub's slugs), every docs page is linked from the README, the README stays short, and its first
lines are the two set-up commands."""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path

import pytest

from conftest import REPO

README_MAX_LINES = 250
# [text](target "title") and ![alt](target); the text may hold one level of brackets ([`a[0]`](x.md)).
INLINE_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE_DEFINITION = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?([^\s>]+)>?")
CODE_SPAN = re.compile(r"(`+)(.+?)\1")
HTML_COMMENT = re.compile(r"<!--.*?-->", re.S)
SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")


def markdown_pages() -> list[Path]:
    """Returns README.md and every Markdown page of docs/."""
    return [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def prose_lines(text: str, blank_code: bool = True) -> list[str]:
    """Returns the lines outside fenced code blocks and HTML comments, code spans blanked unless `blank_code` is
    false (a link written inside code is no link; a heading's code is part of its anchor)."""
    lines, fence = [], None
    for line in HTML_COMMENT.sub("", text).splitlines():
        marker = re.match(r"^\s{0,3}(`{3,}|~{3,})", line)
        if marker and (fence is None or marker.group(1)[0] == fence[0] and len(marker.group(1)) >= len(fence)):
            fence = None if fence else marker.group(1)
            continue
        if fence is None:
            lines.append(CODE_SPAN.sub("code", line) if blank_code else line)
    return lines


def github_slug(heading: str) -> str:
    """Returns GitHub's anchor for a heading's Markdown text: the rendered text lower-cased, punctuation and symbols
    dropped (letters, digits, marks, `_` and `-` stay), each space a hyphen."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)
    text = re.sub(r"[`*]|(?<!\w)_|_(?!\w)", "", text).strip().lower()
    kept = (c for c in text if c in " -_" or unicodedata.category(c)[0] in "LNM")
    return "".join(kept).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    """Returns the anchors of a page's headings, a repeated slug numbered -1, -2, ... as GitHub does."""
    seen: dict[str, int] = {}
    found = set()
    for line in prose_lines(page.read_text(encoding="utf-8"), blank_code=False):
        heading = re.match(r"^\s{0,3}#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not heading:
            continue
        slug = github_slug(heading.group(1))
        found.add(f"{slug}-{seen[slug]}" if slug in seen else slug)
        seen[slug] = seen.get(slug, 0) + 1
    return found


def link_targets(page: Path) -> list[str]:
    """Returns every link and image target written in a page's prose."""
    targets = []
    for line in prose_lines(page.read_text(encoding="utf-8")):
        targets += INLINE_LINK.findall(line)
        targets += REFERENCE_DEFINITION.findall(line)
    return targets


def broken_links(page: Path, root: Path) -> list[str]:
    """Returns a message per relative link of `page` that leaves `root`, names no existing file, or names an anchor
    its Markdown page does not have."""
    problems = []
    for target in link_targets(page):
        if SCHEME.match(target) or target.startswith("//"):
            continue
        path_part, _, anchor = target.partition("#")
        resolved = (page.parent / path_part).resolve() if path_part else page
        if not resolved.is_relative_to(root.resolve()):
            problems.append(f"{page.name}: {target} points outside the repository")
        elif not resolved.exists():
            problems.append(f"{page.name}: {target} does not exist")
        elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
            problems.append(f"{page.name}: {target} names no heading of {resolved.name}")
    return problems


@pytest.mark.parametrize("page", markdown_pages(), ids=lambda p: p.relative_to(REPO).as_posix())
def test_every_relative_link_and_image_resolves(page):
    assert broken_links(page, REPO) == []


def test_readme_is_short():
    lines = (REPO / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines; details belong in docs/"


def test_every_docs_page_is_linked_from_the_readme():
    readme = REPO / "README.md"
    linked = {(readme.parent / t.partition("#")[0]).resolve() for t in link_targets(readme) if not SCHEME.match(t)}
    unlinked = [p.name for p in markdown_pages()[1:] if p.resolve() not in linked]
    assert unlinked == [], "add these pages to the README's Documentation table"


def test_readme_starts_with_the_two_setup_commands_and_make_has_them():
    text = (REPO / "README.md").read_text(encoding="utf-8")
    title, _, rest = text.partition("```")
    assert title.strip() == "# lrp-cli", "the set-up commands come right after the title"
    commands = [line.split("#")[0].split() for line in rest.partition("```")[0].strip().splitlines()]
    assert commands == [["make", "demo"], ["make", "test"]]
    makefile = (REPO / "Makefile").read_text(encoding="utf-8")
    assert re.search(r"^demo:", makefile, re.M) and re.search(r"^test:", makefile, re.M)


@pytest.mark.parametrize(("heading", "slug"), [
    ("Engines: NumPy and compiled onnxruntime", "engines-numpy-and-compiled-onnxruntime"),
    ("The sidecar `MODEL.lrp.toml`", "the-sidecar-modellrptoml"),
    ("Batches: `--jobs`, `--batch-size`, resuming, Dask", "batches---jobs---batch-size-resuming-dask"),
    ("Bag-of-words + kernel SVM pipelines (the paper's first half)",
     "bag-of-words--kernel-svm-pipelines-the-papers-first-half"),
    ("Resuming a batch: `--skip-existing`", "resuming-a-batch---skip-existing"),
    ("snake_case and *emphasis* [linked](x.md)", "snake_case-and-emphasis-linked"),
])
def test_github_slug_matches_githubs_anchors(heading, slug):
    # Expected values are the anchors GitHub renders for these headings (github-slugger's rules, worked by hand).
    assert github_slug(heading) == slug


def test_the_checker_finds_a_missing_file_a_missing_anchor_and_an_escape(tmp_path):
    root = tmp_path / "repo"
    (root / "docs").mkdir(parents=True)
    (root / "docs" / "a.png").write_bytes(b"")
    (root / "docs" / "b.md").write_text("# Title `x.y`\n\n## Same\n\n## Same\n", encoding="utf-8")
    page = root / "docs" / "page.md"
    page.write_text(
        "# Page\n\n![ok](a.png) [ok](b.md#same-1) [ok](b.md#title-xy) [ok](#page) [web](https://example.org/x.md#nothing)\n"
        "![gone](missing.png) [bad anchor](b.md#same-2) [up](../../outside.md) [self](#nowhere)\n"
        "`[in code](nothing.md)`\n```\n[in a fence](nothing.md)\n```\n<!-- [in a comment](nothing.md) -->\n",
        encoding="utf-8")
    (tmp_path / "outside.md").write_text("x", encoding="utf-8")
    assert broken_links(page, root) == [
        "page.md: missing.png does not exist",
        "page.md: b.md#same-2 names no heading of b.md",
        "page.md: ../../outside.md points outside the repository",
        "page.md: #nowhere names no heading of page.md",
    ]
