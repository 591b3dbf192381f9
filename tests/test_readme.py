"""The README tells the truth: its code runs, its links exist, its command synopsis and its
list of demo outputs match the code."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from cryoxr.cli import build_parser
from cryoxr.demo import run_demo

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def blocks(language: str) -> list[str]:
    """The fenced code blocks of one info string ("" for plain blocks), in order."""
    found, current, info = [], None, ""
    for line in README.splitlines():
        if line.startswith("```"):
            if current is None:
                current, info = [], line[3:].strip()
            else:
                if info == language:
                    found.append("\n".join(current) + "\n")
                current = None
        elif current is not None:
            current.append(line)
    return found


def test_the_tour_runs(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    (tour,) = [b for b in blocks("python") if "make_poseset" in b]
    namespace: dict[str, object] = {}
    exec(compile(tour, "README.md (tour)", "exec"), namespace)
    assert int(namespace["counts"].values.max()) <= 1_000_000  # type: ignore[attr-defined]
    assert namespace["defocus"] is not None


def test_local_links_exist() -> None:
    targets = re.findall(r"\]\(([^)#]+)\)", README)
    local = [t for t in targets if not t.startswith(("http://", "https://"))]
    assert local, "expected links to the repository's own documents"
    missing = [t for t in local if not (ROOT / t).exists()]
    assert not missing, f"README links to files that do not exist: {missing}"


def test_command_synopsis_matches_the_parser() -> None:
    (synopsis,) = [b for b in blocks("") if b.lstrip().startswith("cryoxr info")]
    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    current = None
    for line in synopsis.splitlines():
        words = line.split()
        if words and words[0] == "cryoxr":
            current = words[1]
            assert current in commands, f"README synopsis: no command {current!r}"
        flags = re.findall(r"--[a-z][a-z0-9-]*", line)
        known = {o for action in commands[current]._actions for o in action.option_strings}
        unknown = [f for f in flags if f not in known]
        assert not unknown, f"README synopsis of `cryoxr {current}` names unknown flags {unknown}"
    # and every command the parser has is in the synopsis
    assert {w.split()[1] for w in synopsis.splitlines() if w.startswith("cryoxr ")} == set(commands)


def test_the_demo_writes_the_files_the_readme_lists(tmp_path: Path) -> None:
    (output,) = [b for b in blocks("") if b.startswith("cryoxr demo\n")]
    listed = re.findall(r"cryoxr-demo/(\S+)", output)
    summary = run_demo(500, tmp_path / "cryoxr-demo", progress=False)
    written = sorted(str(p.relative_to(tmp_path / "cryoxr-demo")) for p in summary.files.values())
    assert sorted(listed) == written


def test_sources_cite_the_conventions_the_repository_ships() -> None:
    """Docstrings and tests point at docs/CONVENTIONS.md, which users have, by section."""
    text = (ROOT / "docs" / "CONVENTIONS.md").read_text(encoding="utf-8")
    sections = set(re.findall(r"^##+ (\d+(?:\.\d+)?)\.? ", text, flags=re.M))
    for path in [*(ROOT / "src").rglob("*.py"), *(ROOT / "tests").glob("*.py")]:
        if path == Path(__file__).resolve():
            continue
        source = path.read_text(encoding="utf-8")
        assert "../shared/" not in source, f"{path}: cites the project workspace, which users do not have"
        for cited in re.findall(r"CONVENTIONS\.md §(\d+(?:\.\d+)?)", source):
            assert cited in sections, f"{path}: cites docs/CONVENTIONS.md §{cited}, which does not exist"
        bare = re.findall(r"(?<!docs/)CONVENTIONS(?:\.md)? (?:\d|section)", source)
        assert not bare, f"{path}: cites CONVENTIONS without the docs/ path: {bare}"
