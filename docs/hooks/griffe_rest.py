"""griffe extension: the reStructuredText of oirl-fast's docstrings, read as Markdown for mkdocstrings.

The docstrings are written for ``help()`` and Sphinx: ``:func:`load``` roles, ````literal```` spans and
``>>>`` examples. Markdown would print the roles as they are and run the examples into one paragraph, so
each docstring is rewritten once when griffe loads it: a role becomes a code span of its target's last
name(s), ``::`` before a literal block a colon, and a run of ``>>>`` lines (with their output) becomes a fenced ``pycon`` block.
"""
from __future__ import annotations

import re

import griffe

ROLE = re.compile(r":(?:py:)?(?:func|meth|class|mod|attr|data|exc|obj|const):`~?\.?([^`]+)`")
DOCTEST = re.compile(r"((?:^[ \t]*>>>.*\n(?:^(?![ \t]*\n)(?![ \t]*>>>).*\n)*)+)", re.M)


def rest_to_markdown(text: str) -> str:
    """One docstring's reST roles and doctest runs as Markdown (everything else is left as written)."""
    text = ROLE.sub(lambda m: f"`{m.group(1)}`", text)
    text = re.sub(r"^[ \t]*::[ \t]*$", "", text, flags=re.M)  # a lone "::" introduces an indented block
    text = re.sub(r"::[ \t]*$", ":", text, flags=re.M)        # "text::" reads as "text:" before one
    text = DOCTEST.sub(lambda m: "```pycon\n" + m.group(1) + "```\n", text if text.endswith("\n") else text + "\n")
    return text.rstrip("\n")


class RestToMarkdown(griffe.Extension):
    def on_instance(self, *, obj, **kwargs) -> None:
        if obj.docstring is not None:
            obj.docstring.value = rest_to_markdown(obj.docstring.value)


class MappedSubpackages(griffe.Extension):
    """Attach ``collect/``, ``train/`` and ``kernels/`` under ``oirl_fast`` as the install does.

    pyproject.toml maps those top-level folders into the package (``[tool.setuptools] package-dir``);
    griffe reads source folders and would not find ``oirl_fast.train`` inside ``oirl_fast/``."""

    def __init__(self) -> None:
        import tomllib
        from pathlib import Path

        self.root = Path(__file__).resolve().parents[2]  # docs/hooks/ -> the repository
        setuptools = tomllib.loads((self.root / "pyproject.toml").read_text())["tool"]["setuptools"]
        self.mapped = {name.split(".", 1)[1]: folder for name, folder in setuptools["package-dir"].items()
                       if name.startswith("oirl_fast.")}

    def on_package(self, *, pkg, loader, **kwargs) -> None:
        if pkg.path != "oirl_fast":
            return
        for name, folder in self.mapped.items():
            sub = griffe.load(self.root / folder, docstring_parser=loader.docstring_parser,
                              extensions=loader.extensions, resolve_aliases=False)
            sub.name = name
            pkg.set_member(name, sub)
