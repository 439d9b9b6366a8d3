"""Loading untrusted files: no pickle on any path a user passes; tampered artifacts stop the CLI cleanly."""
from __future__ import annotations

import re
from pathlib import Path

from typer.testing import CliRunner

ROOT = Path(__file__).resolve().parents[1]
PRODUCT = [p for d in ("oirl_fast", "collect", "train", "kernels") for p in (ROOT / d).rglob("*.py")]
UNSAFE = re.compile(r"\bimport pickle\b|\bfrom pickle\b|\bjoblib\b|allow_pickle\s*=\s*True|torch\.load\(|\bnp\.load\((?!.*allow_pickle=False)")


def test_no_pickle_anywhere_in_the_product():
    assert len(PRODUCT) > 20
    hits = [f"{p.relative_to(ROOT)}:{n}: {line.strip()}" for p in PRODUCT
            for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1) if UNSAFE.search(line)]
    assert hits == []


def test_cli_refuses_a_tampered_model_with_one_line(tmp_path, make_artifact):
    from oirl_fast.cli import app

    make_artifact(tmp_path / "m", n_estimators=5, n_prompts=2)
    (tmp_path / "q.jsonl").write_text('{"id": 1, "query": "What is 2+2?"}\n')
    booster = tmp_path / "m" / "model.lgb.txt"
    booster.write_text(booster.read_text() + "\n")
    res = CliRunner().invoke(app, ["score", str(tmp_path / "m"), "--in", str(tmp_path / "q.jsonl"),
                                   "--out", str(tmp_path / "o.jsonl")])
    assert res.exit_code == 2
    assert "model.lgb.txt: file does not match its checksum" in res.output
    assert "Traceback" not in res.output and not (tmp_path / "o.jsonl").exists()
