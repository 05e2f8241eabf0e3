"""Every relative link and image in README.md and docs/*.md points at a file that exists, and every #anchor at a
heading of its page (GitHub's heading ids)."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from conftest import PACK_DIR

PAGES = [PACK_DIR / "README.md", *sorted((PACK_DIR / "docs").glob("*.md"))]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")     # [text](target) and ![alt](target)


def without_fences(text: str) -> str:
    return re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)


def prose(text: str) -> str:
    """The page without fenced code blocks and inline code, where brackets are not links."""
    return re.sub(r"`[^`\n]*`", "", without_fences(text))


def heading_ids(page: Path) -> set:
    """The ids GitHub gives the page's headings: lower case, punctuation dropped, spaces to hyphens, repeats -1, -2."""
    ids, seen = set(), {}
    for line in without_fences(page.read_text()).splitlines():
        m = re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if m:
            slug = re.sub(r"[^\w\- ]", "", m.group(1).replace("`", "").lower()).replace(" ", "-")
            n = seen.get(slug, 0)
            seen[slug] = n + 1
            ids.add(slug if n == 0 else f"{slug}-{n}")
    return ids


def links(page: Path) -> list:
    return [t for t in LINK.findall(prose(page.read_text())) if not re.match(r"[a-z][a-z0-9+.-]*:", t)]


def test_the_pages_link_to_each_other():
    readme = links(PACK_DIR / "README.md")
    for page in ("docs/comfyui.md", "docs/python-api.md", "docs/cli.md", "docs/method.md", "docs/performance.md",
                 "docs/evaluation.md", "docs/errors.md", "docs/development.md", "docs/paper-workflow.jpg"):
        assert page in readme, f"README.md does not link {page}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(PACK_DIR).as_posix())
def test_relative_links_point_at_files_and_headings_that_exist(page):
    broken = []
    for target in links(page):
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            broken.append(f"{target}: no file {dest.relative_to(PACK_DIR) if dest.is_relative_to(PACK_DIR) else dest}")
        elif anchor and dest.suffix == ".md" and anchor not in heading_ids(dest):
            broken.append(f"{target}: {dest.name} has no heading #{anchor}")
    assert not broken, f"{page.relative_to(PACK_DIR)}: " + "; ".join(broken)


def test_the_link_checker_sees_links_and_anchors(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("# A page: `x`\n\n## Two — words\n\n[a](other.md#x) ![i](img.png) `[not](a-link.md)`\n"
                    "```\n[not](either.md)\n```\n[web](https://example.com) [self](#two--words)\n")
    assert links(page) == ["other.md#x", "img.png", "#two--words"]
    assert heading_ids(page) == {"a-page-x", "two--words"}
