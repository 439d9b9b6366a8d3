"""The repo's stage folders are installed as ``oirl_fast.*`` and never shadow top-level modules."""
from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
STAGE_FOLDERS = ("kernels", "train", "collect")


def _origin_in_repo(name: str) -> bool:
    spec = importlib.util.find_spec(name)
    if spec is None:
        return False
    places = [spec.origin] if spec.origin else []
    places += list(spec.submodule_search_locations or [])
    return any(Path(p).resolve().is_relative_to(REPO_ROOT) for p in places if p and p != "namespace")


@pytest.mark.parametrize("name", STAGE_FOLDERS)
def test_stage_folders_do_not_resolve_to_the_repo(name):
    assert (REPO_ROOT / name).is_dir()  # the folder exists, so the check below can fail
    assert not _origin_in_repo(name), f"`import {name}` finds the repo's own folder: {importlib.util.find_spec(name)}"


@pytest.mark.parametrize("name", STAGE_FOLDERS)
def test_stage_folders_are_the_package_subpackages(name):
    module = importlib.import_module(f"oirl_fast.{name}")
    assert Path(module.__file__).resolve().parent == REPO_ROOT / name


def test_subprocesses_started_by_tests_keep_the_repo_off_the_path():
    code = ("import importlib.util, sys; "
            "print(all(importlib.util.find_spec(n) is None or 'site-packages' in (importlib.util.find_spec(n).origin "
            "or '') for n in ('kernels', 'train', 'collect')))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "True", out.stderr


def test_sentence_transformers_imports():
    # transformers' is_kernels_available() reaches for a top-level `kernels`: the repo folder broke this.
    import sentence_transformers

    assert sentence_transformers.SentenceTransformer is not None


def test_every_package_folder_is_installed():
    # Editable installs import any folder under oirl_fast/, so a package missing from pyproject.toml's
    # explicit list passes every test here and is absent from a built wheel.
    import tomllib

    setup = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    folders = {name: REPO_ROOT / path for name, path in setup["package-dir"].items()}
    found = set()
    for name, root in folders.items():
        for init in root.rglob("__init__.py"):
            rel = init.parent.relative_to(root).parts
            found.add(".".join((name, *rel)))
    assert found - set(setup["packages"]) == set(), "add these to [tool.setuptools] packages"


def test_importing_the_reranking_package_keeps_the_public_function():
    import oirl_fast
    import oirl_fast.reranking.run  # noqa: F401  binds oirl_fast.reranking, never oirl_fast.rerank

    assert callable(oirl_fast.rerank) and oirl_fast.rerank.__module__ == "oirl_fast.api"
