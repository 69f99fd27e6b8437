"""Every link of the documentation resolves, and it names no file outside the repository."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = sorted(path for path in [
    *ROOT.glob("*.md"), *ROOT.glob("docs/**/*.md"), *ROOT.glob("examples/**/*.md"),
    *ROOT.glob("benchmarks/**/*.md")]
    # (not what lives in hidden folders: virtualenvs, the Temporal CLI's Go modules)
    if not any(part.startswith(".") for part in path.relative_to(ROOT).parts))
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
#: a repository path in backticks: `docs/guide.md`, `scripts/kafka-local`
CODE_PATH = re.compile(r"`((?:\.?[\w-]+/)+[\w.-]+\.(?:md|txt|py|yml|yaml|cfg|toml|json))`")
#: files of the project's design notes, which live outside the repository
OUTSIDE = ("DESIGN.md", "KAFKA-LOCAL.md", "STYLE.md", "seeds/", "../shared")


def slug(heading: str) -> str:
    """GitHub's anchor of a Markdown heading."""
    text = re.sub(r"[`*_]|\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    return {slug(line.lstrip("#")) for line in path.read_text().splitlines()
            if line.startswith("#")}


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(doc):
    broken = []
    for target in LINK.findall(doc.read_text()):
        if re.match(r"[a-z]+:", target):
            continue  # http(s), mailto: not checked here (no network)
        path, _, anchor = target.partition("#")
        file = (doc.parent / path).resolve() if path else doc
        if not file.exists():
            broken.append(target)
        elif anchor and file.suffix == ".md" and anchor not in anchors(file):
            broken.append(target)
    assert broken == [], f"{doc.relative_to(ROOT)}: links to nothing: {broken}"


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_path_named_exists_in_the_repository(doc):
    text = doc.read_text()
    missing = [p for p in CODE_PATH.findall(text)
               if not (ROOT / p).exists() and not (doc.parent / p).exists()]
    assert missing == [], f"{doc.relative_to(ROOT)} names missing files: {missing}"
    outside = [name for name in OUTSIDE if name in text]
    assert outside == [], f"{doc.relative_to(ROOT)} names files outside the repository"


def test_the_link_check_sees_the_docs():
    assert {"README.md", "docs/guide.md", "docs/reliability.md"} <= {
        str(d.relative_to(ROOT)) for d in DOCS}


def test_each_example_has_a_topic_of_its_own():
    """An example run after another never replays (and dead-letters) the other's messages."""
    quickstart = set(re.findall(r"--topic (\S+)", (ROOT / "docs/quickstart.md").read_text()))
    dice = (ROOT / "examples" / "dice" / "consumer.py").read_text()
    dice_topics = set(re.findall(r'"KSER_TOPIC", "([^"]+)"', dice))
    controls = (ROOT / "examples" / "operations" / "controls.py").read_text()
    controls_topics = set(re.findall(r'topic="([^"]+)"', controls))
    stack = set(re.findall(r"--topic\", \"([^\"]+)\"", (ROOT / "docker-compose.yml").read_text()))
    assert quickstart == {"dice"} and dice_topics == {"dice-example"} and controls_topics
    assert stack == {"stack"}
    # (kser demo runs on a broker inside its own process: it meets no other example)
    groups = [quickstart, dice_topics, controls_topics, stack]
    for i, topics in enumerate(groups):
        for other in groups[i + 1:]:
            assert not topics & other, (topics, other)


def settings_table() -> str:
    guide = (ROOT / "docs" / "guide.md").read_text()
    return guide.split("## Settings", 1)[1].split("\n## ", 1)[0]


def test_every_environment_variable_kser_reads_is_in_the_settings_table():
    read = {name for path in (ROOT / "kser").rglob("*.py")
            for name in re.findall(r"[\"'](KSER_[A-Z0-9_]+)[\"']", path.read_text())}
    read -= {"KSER_METADATA_KEY"}  # (a constant's name, not a variable)
    assert len(read) > 40
    table = settings_table()
    assert sorted(name for name in read if f"`{name}`" not in table) == []


def test_every_variable_docker_compose_sets_for_kser_is_documented():
    compose = (ROOT / "docker-compose.yml").read_text()
    table = settings_table()
    names = set(re.findall(r"^\s+(KSER_[A-Z_]+):", compose, re.MULTILINE))
    assert names and sorted(name for name in names if f"`{name}`" not in table) == []
