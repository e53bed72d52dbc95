"""The documentation holds together: every relative link leads to a file that
exists, and the one configuration table says what ThrottleConfig is."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from aimd_redis import ThrottleConfig
from aimd_redis.schema import SETTINGS

ROOT = Path(__file__).parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# [text](target) and ![alt](target), outside code spans; a target ends at ')' or a space (a title).
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)[^)]*\)")
CONFIG_HEADER = "| field | kept | default | meaning, and why this default |"


def relative_links(page: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.S)
    text = re.sub(r"`[^`\n]*`", "", text)
    return [t for t in LINK.findall(text) if not re.match(r"[a-z][a-z0-9+.-]*:", t) and not t.startswith("#")]


def anchors(page: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to dashes."""
    text = re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.S)
    headings = re.findall(r"^#+ (.+)$", text, flags=re.M)
    return {re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-") for h in headings}


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_leads_to_a_file_that_exists(page: Path) -> None:
    for target in relative_links(page):
        path, _, anchor = target.partition("#")
        linked = (page.parent / path).resolve()
        assert linked.exists(), f"{page.name} links to {target}, which does not exist"
        if anchor and linked.suffix == ".md":
            assert anchor in anchors(linked), f"{page.name} links to {target}: no such heading"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_links_within_a_page_name_one_of_its_headings(page: Path) -> None:
    text = re.sub(r"`[^`\n]*`", "", page.read_text(encoding="utf-8"))
    for anchor in re.findall(r"\]\(#([^)]+)\)", text):
        assert anchor in anchors(page), f"{page.name} links to #{anchor}: no such heading"


def test_the_link_checker_sees_links_and_headings() -> None:
    readme = ROOT / "README.md"
    assert "docs/api.md" in relative_links(readme)
    assert "which-policy" in anchors(readme)


def test_one_configuration_table_names_every_field_and_where_it_is_kept() -> None:
    holding = [p for p in PAGES if CONFIG_HEADER in p.read_text(encoding="utf-8")]
    assert [p.name for p in holding] == ["api.md"]
    text = holding[0].read_text(encoding="utf-8").split(CONFIG_HEADER, 1)[1]
    rows = re.findall(r"^\| `(\w+)` \| (model|process) \| ([^|]+) \|", text, flags=re.M)
    assert sorted(name for name, _, _ in rows) == sorted(ThrottleConfig.model_fields)
    assert {name for name, kept, _ in rows if kept == "model"} == set(SETTINGS)
    defaults = ThrottleConfig()
    for name, _, shown in rows:
        expected = getattr(defaults, name)
        value = shown.strip().strip('`"')
        assert (value == expected) if isinstance(expected, str) else (float(value) == expected), name


def test_the_readme_says_why_the_default_policy_is_not_the_recommended_one() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert ThrottleConfig().policy == "classic"
    assert "**Choose `adaptive` for a new fleet.**" in readme
    assert "The default is `classic`" in readme
