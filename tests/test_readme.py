"""The README: short, current, its links resolve, its results table is the generated one, and its
`oirl score` example does what it shows (run against a small model trained here).

The Python example is run by tests/test_api.py."""
from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
README = REPO_ROOT / "README.md"
TEXT = README.read_text(encoding="utf-8")

# Stale content the rewrite removed (issue 22); none of it may come back.
STALE = ["last release", "previous release", "../shared", "Python 3.11", "30 µs", "lent to this task"]


def section(name: str) -> str:
    """The text between the README's snippet markers ``[start:name]`` and ``[end:name]`` (the docs include it)."""
    m = re.search(rf"<!-- --8<-- \[start:{name}\] -->\n(.*?)<!-- --8<-- \[end:{name}\] -->", TEXT, re.S)
    assert m, f"README.md has no section {name!r}"
    return m.group(1)


def code_blocks(text: str, lang: str) -> list[str]:
    return [b.strip() for b in re.findall(rf"```{lang}\n(.*?)```", text, re.S)]


def test_readme_is_at_most_200_lines():
    assert len(TEXT.splitlines()) <= 200


@pytest.mark.parametrize("stale", STALE)
def test_no_stale_content(stale):
    pages = [README, *sorted((REPO_ROOT / "docs").rglob("*.md"))]
    hits = [p.relative_to(REPO_ROOT) for p in pages if stale in p.read_text(encoding="utf-8")]
    assert not hits, f"{stale!r} in {hits}"


def test_python_version_matches_pyproject():
    import tomllib

    requires = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    assert requires == ">=3.10" and "Python 3.10 or newer" in TEXT


def test_relative_links_resolve():
    links = re.findall(r"\]\(([^)\s]+)\)", TEXT)
    assert links
    anchors = {slug(h) for h in re.findall(r"^#+ (.*)$", TEXT, re.M)}
    broken = []
    for link in links:
        if re.match(r"[a-z]+:", link):
            continue
        path, _, anchor = link.partition("#")
        if not path:
            if anchor not in anchors:
                broken.append(link)
        elif not (REPO_ROOT / path).exists():
            broken.append(link)
    assert not broken, broken


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_results_table_is_the_generated_one():
    table = re.search(r"<!-- results-table:.*?-->\n(.*?)<!-- /results-table -->", TEXT, re.S).group(1).strip()
    generated = (REPO_ROOT / "docs/results/tables/readme.md").read_text(encoding="utf-8")
    generated = re.sub(r"^<!--.*?-->\n", "", generated).strip()
    assert table == generated, "run: python benchmarks/results_tables.py --pages docs/results/tables --readme README.md " \
                               "docs/results/data/demo-summary.json"


def test_score_example_shapes():
    """The example is one command, one input line and one output line, and they agree with each other."""
    example = section("score-example")
    (command,) = code_blocks(example, "bash")
    given, shown = (json.loads(b) for b in code_blocks(example, "json"))
    assert shlex.split(command)[:2] == ["oirl", "score"]
    assert set(given) == {"id", "query"} and shown["id"] == given["id"] and shown["line"] == 1


@pytest.fixture(scope="module")
def score_run(tmp_path_factory, gsm8k_model, cache_dir):
    """The README's `oirl score` command, run as written in a folder where the small GSM8K model of the test
    session (the 16 published prompts, calibrated; shared with the tradeoff and answer tests, so nothing is
    trained here) stands at the path `make demo` gives its model. Returns (the output records, the README's
    output record, the model)."""
    import oirl_fast as oirl

    example = section("score-example")
    (command,) = code_blocks(example, "bash")
    given, shown = code_blocks(example, "json")
    argv = shlex.split(command)
    root = tmp_path_factory.mktemp("readme-score")
    model_dir = root / argv[2]
    model_dir.parent.mkdir(parents=True)
    model_dir.symlink_to(gsm8k_model, target_is_directory=True)
    in_path = root / argv[argv.index("--in") + 1]
    in_path.write_text(given + "\n", encoding="utf-8")
    oirl_bin = Path(sys.executable).with_name("oirl")
    done = subprocess.run([str(oirl_bin), *argv[1:], "--cache-dir", str(cache_dir)], cwd=root,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    out_path = root / argv[argv.index("--out") + 1]
    records = [json.loads(line) for line in out_path.read_text(encoding="utf-8").splitlines()]
    return records, json.loads(shown), oirl.load(gsm8k_model, cache_dir=cache_dir)


def test_score_example_output_matches_the_readme(score_run):
    records, shown, model = score_run
    assert len(records) == 1
    (record,) = records
    assert list(record) == list(shown)  # the same fields, in the same order
    for key, value in shown.items():
        assert type(record[key]) is type(value), key
    assert record["id"] == shown["id"] and record["line"] == shown["line"]
    assert 0.0 <= record["score"] <= 1.0 and 0.0 <= record["confidence"] <= 1.0
    prompts = dict(zip(model.prompt_ids, (p["text"] for p in model.artifact.metadata.prompts)))
    assert record["prompt"] == prompts[record["prompt_id"]]
    assert shown["prompt"] == prompts[shown["prompt_id"]]  # the README's pick is one of the model's prompts
