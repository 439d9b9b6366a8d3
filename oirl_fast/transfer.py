"""Transfer to a benchmark without logs: the leave-one-dataset-out report.

A user who wants to re-rank a benchmark often has logs of *other* benchmarks only. For
each dataset D, a reward model is trained on every other dataset's logs, minus every
question that also occurs in D (the ``leave-one-dataset-out`` protocol), and tested on
all of D's questions. Its baseline is the prompt best on the training datasets: what a
user without D's logs would choose. Questions are matched across datasets by normalized
text (:func:`oirl_fast.multilog.regroup_across`); the counts of shared questions and
dropped rows are part of the report, because pooling without them is mostly leakage
(every MAWPS test question reappears in SVAMP's logs).
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Mapping

import pyarrow as pa
import pyarrow.compute as pc

from .errors import OirlError
from .evaluation import evaluate, summary
from .multilog import check_prompts, regroup_across
from .report import summary_line, write_json
from .splits import LODO, Protocol
from .train.fit import fit_reward_model, trainable_split, write_artifact
from .train.reward_model import TrainConfig


def cross_dataset_leakage(table: pa.Table, heldout: str) -> dict:
    """How much of dataset ``heldout`` the other datasets' rows already hold (``group`` = question).

    ``heldout_questions``: its distinct questions; ``in_training_datasets``: how many of them
    also occur in another dataset's rows, before any dropping (``by_dataset``: per dataset);
    ``dropped_rows``: the other datasets' rows on those questions, which leave-one-dataset-out
    removes from training.
    """
    is_test = pc.equal(table.column("dataset"), heldout)
    test_groups = pc.unique(table.column("group").filter(is_test))
    shared = pc.and_(pc.is_in(table.column("group"), value_set=test_groups), pc.invert(is_test))
    rows = table.filter(shared)
    by_dataset = {ds: len(pc.unique(table.filter(pc.and_(shared, pc.equal(table.column("dataset"), ds)))
                                    .column("group")))
                  for ds in pc.unique(table.filter(pc.invert(is_test)).column("dataset")).to_pylist()}
    return {
        "heldout_questions": len(test_groups),
        "in_training_datasets": len(pc.unique(rows.column("group"))),
        "by_dataset": by_dataset,
        "dropped_rows": rows.num_rows,
    }


def run_transfer(
    tables: Mapping[str, pa.Table],
    embedder,
    out: str | Path,
    backend: str = "lightgbm",
    seeds: int = 1,
    compile_library: bool = False,
    log: Callable[[str], None] = print,
) -> dict[str, dict]:
    """Leave-one-dataset-out over ``tables`` (dataset name -> its log), two datasets at least.

    Per held-out dataset D: fits the model (seed 0, saved as ``out/D/model``, plus seeds
    1..seeds-1 for the spread), evaluates it on all of D (``out/D/report.json``) and returns
    :func:`oirl_fast.evaluation.summary`'s fields plus ``trained_on`` and
    ``cross_dataset_leakage`` (:func:`cross_dataset_leakage`). A dataset whose held-out
    questions cover every training row gets ``skipped`` (the reason) instead of results.
    """
    if len(tables) < 2:
        raise OirlError("transfer needs two datasets at least: one to test on, the others to train on")
    out = Path(out)
    names = list(tables)
    check_prompts(list(tables.values()), [Path(n) for n in names])
    table = regroup_across(list(tables.values()))
    result = {}
    for ds in names:
        protocol = Protocol(LODO, heldout_dataset=ds)
        leakage = cross_dataset_leakage(table, ds)
        trained_on = [n for n in names if n != ds]
        log(f"transfer to {ds}: train on {', '.join(trained_on)}; "
            f"{leakage['in_training_datasets']} of its {leakage['heldout_questions']} questions occur there "
            f"({leakage['dropped_rows']} rows dropped)")
        if leakage["dropped_rows"] == sum(tables[n].num_rows for n in trained_on):
            # e.g. SVAMP held out with MAWPS alone: every MAWPS question is also a SVAMP question
            reason = f"every question of {', '.join(trained_on)} also occurs in {ds}: no training rows remain"
            log(f"  skipped: {reason}")
            result[ds] = {"trained_on": trained_on, "skipped": reason, "cross_dataset_leakage": leakage}
            continue
        split = trainable_split(table, protocol)
        first = fit_reward_model(table, protocol, TrainConfig(backend=backend), embedder, log, split=split)
        others = [fit_reward_model(table, protocol, TrainConfig(backend=backend, seed=s), embedder, lambda *_: None,
                                   split=split).model
                  for s in range(1, seeds)]
        artifact = write_artifact(first, out / ds / "model", compile_library)
        rep = evaluate(artifact, table, embedder, seed_models=others)
        rep["cross_dataset_leakage"] = leakage
        write_json(rep, out / ds / "report.json")
        s = summary(rep)
        result[ds] = {"trained_on": trained_on, **s, "cross_dataset_leakage": leakage}
        log(f"  {summary_line(s, best_single='prompt best on the training datasets')}")
    return result
