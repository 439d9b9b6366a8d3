"""The docs site: `mkdocs build --strict` passes offline, the CLI reference is generated from the typer app,
the docstrings' reST reads as Markdown, and the results pages are those the demo summary generates."""
from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
DOCS = REPO_ROOT / "docs"


def load(path: Path):
    """A module of the repo that is not installed (docs hooks, benchmark scripts), by its file path."""
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """The site built with `mkdocs build --strict` into a temporary folder (the repo's site/ is not touched)."""
    out = tmp_path_factory.mktemp("site")
    mkdocs = Path(sys.executable).with_name("mkdocs")
    done = subprocess.run([str(mkdocs), "build", "--strict", "--site-dir", str(out)], cwd=REPO_ROOT,
                          capture_output=True, text=True, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert done.returncode == 0, done.stderr[-4000:]
    return out


def test_site_builds_strict_with_every_page(site):
    import yaml

    nav = yaml.safe_load((REPO_ROOT / "mkdocs.yml").read_text())["nav"]

    def pages(items):
        for item in items:
            for value in item.values():
                yield from pages(value) if isinstance(value, list) else [value]

    for page in pages(nav):
        assert (site / page).with_suffix(".html").exists(), page


def test_site_needs_no_network(site):
    """No web fonts, no CDN: every stylesheet, script, image and font the pages load is in the site."""
    remote = re.compile(r"""<(?:link|script|img|source)\b[^>]*\b(?:href|src)=["']?(?:https?:)?//""", re.I)
    offenders = {}
    for page in site.rglob("*.html"):
        found = remote.findall(page.read_text(encoding="utf-8"))
        if found:
            offenders[str(page.relative_to(site))] = found[:3]
    assert not offenders, offenders
    css = "".join(p.read_text(encoding="utf-8", errors="replace") for p in site.rglob("*.css"))
    assert "fonts.googleapis" not in css and "fonts.gstatic" not in css
    assert (site / "search" / "search_index.json").exists()


def test_cli_page_holds_every_command_and_option(site):
    import typer

    from oirl_fast.cli import app

    html = (site / "reference" / "cli.html").read_text(encoding="utf-8")
    group = typer.main.get_command(app)
    assert len(group.commands) >= 10
    for name, command in group.commands.items():
        assert f"oirl {name}</code>" in html, name
        for param in (p for p in command.params if not p.hidden):
            for opt in getattr(param, "opts", []):
                if opt.startswith("-"):
                    assert f"<code>{opt}</code>" in html, (name, opt)


def test_cli_reference_follows_the_app(monkeypatch):
    """The page is rendered from the app at build time: an option added to a command shows up."""
    import typer

    from oirl_fast import cli

    hook = load(DOCS / "hooks" / "cli_reference.py")
    extra = typer.Typer()

    @extra.command("probe")
    def probe(flag_name: int = typer.Option(3, "--probe-option", help="A *probe* | with <markup>.")):
        """Probe command.

        Second paragraph."""

    @extra.command("other")
    def other():
        """A second command, so that typer makes a group."""

    monkeypatch.setattr(cli, "app", extra)
    text = hook.render_cli()
    assert "## `oirl probe`" in text and "Second paragraph." in text
    assert "| `--probe-option` | int | `3` | A \\*probe\\* \\| with &lt;markup&gt;. |" in text


def test_rest_roles_and_doctests_read_as_markdown():
    rest = load(DOCS / "hooks" / "griffe_rest.py")
    text = ("Use :func:`load` or :meth:`~oirl_fast.api.Model.pick`::\n\n    indented\n\n"
            ">>> import oirl_fast as oirl\n>>> oirl.load('m')   # doctest: +SKIP\nModel(...)\n\nAfter.")
    md = rest.rest_to_markdown(text)
    assert "`load`" in md and "`oirl_fast.api.Model.pick`:" in md and ":func:" not in md and "::" not in md
    assert "```pycon\n>>> import oirl_fast as oirl\n>>> oirl.load('m')   # doctest: +SKIP\nModel(...)\n```" in md
    assert md.endswith("After.")


def test_api_page_documents_the_public_names(site):
    html = (site / "reference" / "api.html").read_text(encoding="utf-8")
    for name in ("load", "fit", "evaluate", "read_log", "rerank", "Model", "Picks"):
        assert f'id="oirl_fast.api.{name}"' in html, name
    training = (site / "reference" / "training.html").read_text(encoding="utf-8")
    assert 'id="oirl_fast.train.fit"' in training  # a package mapped in from train/ (pyproject package-dir)
    assert ":func:" not in html and ":class:" not in html


def test_results_pages_are_generated_from_the_demo_summary(tmp_path):
    tables = load(REPO_ROOT / "benchmarks" / "results_tables.py")
    source = "docs/results/data/demo-summary.json"
    summary = json.loads((REPO_ROOT / source).read_text(encoding="utf-8"))
    written = tables.write_pages(summary, tmp_path, source)
    assert {p.name for p in written} == {"main.md", "transfer.md", "crossfit.md", "readme.md"}
    for path in written:
        checked_in = DOCS / "results" / "tables" / path.name
        assert checked_in.read_text(encoding="utf-8") == path.read_text(encoding="utf-8"), (
            f"{checked_in} is stale: python benchmarks/results_tables.py --pages docs/results/tables "
            f"--readme README.md {source}")


def test_results_pages_show_the_summary_figures(site):
    summary = json.loads((DOCS / "results" / "data" / "demo-summary.json").read_text(encoding="utf-8"))
    html = (site / "results" / "index.html").read_text(encoding="utf-8")
    grouped = summary["svamp"]["grouped"]
    assert f"{grouped['best_of_n']:.3f}" in html and f"{grouped['auc']:.3f}" in html
    crossfit = (site / "results" / "crossfit.html").read_text(encoding="utf-8")
    assert f"{summary['crossfit']['mawps']['n_questions']:,}" in crossfit
