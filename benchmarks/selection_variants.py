"""Selection quality of reward-model variants on the real logs (best of 6 / best of 16).

    python benchmarks/selection_variants.py DATASET PROTOCOL [VARIANT ...]
    variants: base (early stopping), noes (300 rounds), seeds (mean of 3 seeds), offset_noes

`offset_noes` is a query-relative model: each training row gets the logit of its
question's mean success over the training prompts as LightGBM init_score, and
questions every prompt got right (or wrong) are dropped, so the trees can only learn
which prompt does better on a question, not how hard the question is.
Uses the embedding cache ($OIRL_CACHE_DIR); LightGBM with its default 255 bins and a
validation draw of its own, so figures differ slightly from `oirl demo`.
"""
import sys
import time

import lightgbm as lgb
import numpy as np

from oirl_fast import metrics
from oirl_fast.collect.published import import_published
from oirl_fast.embed import Embedder
from oirl_fast.features import grid_features
from oirl_fast.splits import split_log
from oirl_fast.train.fit import training_examples
from oirl_fast.splits import Protocol, pool


def main(ds: str, proto: str, variants: list[str]) -> None:
    table = import_published(ds)
    emb = Embedder(progress=False)
    sp = split_log(table, Protocol(proto))
    all_ids = [p for p, _ in sp.prompts]
    tr = pool(sp.train, "group", sp.train_prompt_ids)
    te = pool(sp.test, Protocol(proto).test_unit, all_ids)
    P = emb.embed([x for _, x in sp.prompts])
    cols = [all_ids.index(p) for p in sp.train_prompt_ids]
    X, y, w, g = training_examples(tr, emb.embed(tr.texts), P[cols])
    u, _ = np.nonzero(tr.count > 0)
    base = (np.nansum(tr.rate * tr.count, 1) / tr.count.sum(1))[u]
    Xte = grid_features(emb.embed(te.texts), P)
    sub6 = te.columns(sp.train_prompt_ids)
    keep6 = (sub6.count > 0).all(1)
    keep16 = (te.count > 0).all(1)
    tracc = np.nansum(tr.rate * tr.count, 0) / tr.count.sum(0)
    print(f"{ds} {proto}: best single {metrics.fixed_prompt_accuracy(sub6.rate[keep6], int(np.argmax(tracc))):.4f}, "
          f"oracle {metrics.oracle_accuracy(sub6.rate[keep6]):.4f}")
    rng = np.random.default_rng(0)
    ug = np.unique(g)
    va = np.isin(g, rng.choice(ug, int(0.15 * len(ug)), replace=False))

    def run(name, rounds=300, offset=False, es=True, seeds=(0,)):
        total = 0
        t0 = time.time()
        for s in seeds:
            prm = dict(objective="cross_entropy", learning_rate=0.05, num_leaves=63, min_data_in_leaf=20,
                       feature_fraction=0.5, bagging_fraction=0.8, bagging_freq=1, verbosity=-1, num_threads=2, seed=s)
            m = np.ones(len(y), bool)
            init = None
            if offset:
                m = (base > 0) & (base < 1)
                b = np.clip(base, 0.02, 0.98)
                init = np.log(b / (1 - b))
            sel_tr, sel_va = m & ~va, m & va
            dtr = lgb.Dataset(X[sel_tr], y[sel_tr], weight=w[sel_tr], init_score=None if init is None else init[sel_tr])
            dva = lgb.Dataset(X[sel_va], y[sel_va], weight=w[sel_va],
                              init_score=None if init is None else init[sel_va], reference=dtr)
            cb = [lgb.early_stopping(40, verbose=False)] if es else []
            bst = lgb.train(prm, dtr, rounds, valid_sets=[dva], callbacks=cb)
            total = total + bst.predict(Xte, raw_score=True, num_iteration=bst.best_iteration if es else None).reshape(
                -1, len(all_ids))
        r6 = metrics.pick_accuracy(total[keep6][:, cols], sub6.rate[keep6])
        r16 = metrics.pick_accuracy(total[keep16], te.rate[keep16])
        print(f"{name:30s} best6={r6:.4f} best16={r16:.4f} t={time.time() - t0:.0f}s", flush=True)

    specs = {
        "base": lambda: run("early stopping"),
        "noes": lambda: run("300 rounds, no early stopping", es=False),
        "seeds": lambda: run("early stopping, mean of 3 seeds", seeds=(0, 1, 2)),
        "offset_noes": lambda: run("query-relative, 300 rounds", offset=True, es=False),
    }
    for v in variants or list(specs):
        specs[v]()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3:])
