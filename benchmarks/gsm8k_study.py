"""Why per-query prompt selection gains nothing on GSM8K: diagnostics and cross-fitted variants.

    python benchmarks/gsm8k_study.py                      # GSM8K, all variants, 5 folds (~25 min on 2 cores)
    python benchmarks/gsm8k_study.py --quick              # 3,000 questions, 3 variants, fewer trees (~3 min)
    python benchmarks/gsm8k_study.py --dataset svamp --variants base,qf
    python benchmarks/gsm8k_study.py --json study.json    # also write every figure as JSON

Every variant is measured the same way: grouped K-fold cross-fitting over the dataset's questions
(each question is a test question exactly once, picked by a model fitted on the other folds), best of
the 6 training prompts against the best single prompt chosen on each training side, and the paired
bootstrap 95% CI of the per-question difference (``oirl_fast.metrics``). Models are LightGBM with
``TrainConfig`` (early stopping on a group-held-out 15% of the training side) at ``num_threads=1``.

Diagnostics printed before the variants:
  * prompts: accuracy, correlation of their per-question outcomes (raw and after removing each
    question's mean), and how often a question's fixed best prompt fails while another succeeds;
  * noise: a Rasch test. With one answer per (question, prompt), any question's number of correct
    prompts k is explained by its difficulty; only *which* prompts succeed given k can show a
    question-prompt interaction. Under "no interaction" that pattern depends on the prompts' overall
    strengths alone (conditional logit); the likelihood-ratio statistic against the observed pattern
    frequencies, minus its parametric-bootstrap null mean, per question, measures interaction that is
    not sampling luck. SVAMP/MAWPS are scored on one answer per pair too (their first logged copy), and
    their repeats give the per-pair disagreement rate directly;
  * question features (length, numbers, sentences; the gold solution's step count as a diagnostic
    only, never a model input) against which prompt wins.
Embeddings come through ``oirl_fast.embed.Embedder`` with its on-disk cache (``--cache-dir``).
"""
from __future__ import annotations

import argparse
import csv
import gzip
import io
import itertools
import json
import re
import sys
import time
from pathlib import Path

import numpy as np

from oirl_fast import metrics
from oirl_fast.collect.published import bundled_source, import_published
from oirl_fast.embed import Embedder
from oirl_fast.encoders import make_encoder
from oirl_fast.features import grid_features
from oirl_fast.query_features import FEATURE_NAMES, query_features
from oirl_fast.splits import pool
from oirl_fast.train.reward_model import RewardModel, TrainConfig

TRAIN_PROMPTS = ["nan", "CoT", "APE", "Dis", "ToT", "Decomp"]
REPO = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------- data


def gold_steps(ds: str, n_rows: int) -> np.ndarray:
    """int (n_rows,): steps of the gold solution per logged question row, in log order (diagnostic only).

    GSM8K: calculator annotations ``<<...>>`` in the reference solution; SVAMP/MAWPS: operators of the
    ``Equation`` column. Never a model input: it is not known at scoring time."""
    src = bundled_source()
    steps: list[int] = []
    if ds == "gsm8k":
        for name, limit in (("train", None), ("test", 1000)):
            with gzip.open(src / "gsm8k" / f"{name}.jsonl.gz", "rt", encoding="utf-8") as fh:
                for i, line in enumerate(fh):
                    if limit is not None and i == limit:
                        break
                    steps.append(json.loads(line)["answer"].count("<<"))
    else:
        for k in range(5):
            with gzip.open(src / ds / f"fold{k}_train.csv.gz", "rt", encoding="utf-8", newline="") as fh:
                for row in csv.DictReader(io.StringIO(fh.read())):
                    steps.append(sum(tok in "+-*/" for tok in row["Equation"].split()))
    if len(steps) != n_rows:
        raise SystemExit(f"gold steps: {len(steps)} rows, the log has {n_rows}")
    return np.asarray(steps)


def load(ds: str) -> dict:
    """Per question group: texts, pooled rates/counts (U, 6), one answer per pair (first and second
    logged copy; NaN where absent) and the gold step count."""
    table = import_published(ds)
    grouped = pool(table, "group", TRAIN_PROMPTS)
    rows = pool(table, "query_id", TRAIN_PROMPTS)  # one unit per logged row: a single answer per pair
    qids = table.column("query_id").to_pylist()
    row_of = {}
    for i, q in enumerate(qids):
        row_of.setdefault(q, i)
    steps_by_row = gold_steps(ds, len(set(qids)))
    order = {q: k for k, q in enumerate(dict.fromkeys(qids))}
    g_index = {g: u for u, g in enumerate(grouped.groups)}
    U = grouped.n_units
    first = np.full((U, 6), np.nan)
    second = np.full((U, 6), np.nan)
    seen = np.zeros(U, int)
    steps = np.zeros(U, int)
    for r, g in enumerate(rows.groups):
        u = g_index[g]
        if seen[u] == 0:
            first[u] = rows.rate[r]
            steps[u] = steps_by_row[order[rows.ids[r]]]
        elif seen[u] == 1:
            second[u] = rows.rate[r]
        seen[u] += 1
    return {"name": ds, "texts": grouped.texts, "rate": grouped.rate, "count": grouped.count,
            "first": first, "second": second, "steps": steps}


def subsample(d: dict, n: int, seed: int) -> dict:
    keep = np.sort(np.random.default_rng(seed).choice(len(d["texts"]), n, replace=False))
    out = {k: (v[keep] if isinstance(v, np.ndarray) else v) for k, v in d.items()}
    out["texts"] = [d["texts"][i] for i in keep]
    return out


# ----------------------------------------------------------------------------- diagnostics


def prompt_diagnostics(y: np.ndarray) -> dict:
    """y: float (U, 6) one answer per pair. Accuracy, correlations and 'best prompt fails, another wins'."""
    acc = y.mean(0)
    best = int(np.argmax(acc))
    resid = y - y.mean(1, keepdims=True)
    others = np.delete(y, best, axis=1)
    top3 = np.argsort(-acc)[:3]
    c = np.corrcoef(y[:, top3].T)
    cr = np.corrcoef(resid[:, top3].T)
    return {
        "accuracy": dict(zip(TRAIN_PROMPTS, acc.round(4).tolist())),
        "top3": [TRAIN_PROMPTS[i] for i in top3],
        "top3_corr": float(c[np.triu_indices(3, 1)].mean()),
        "top3_resid_corr": float(cr[np.triu_indices(3, 1)].mean()),
        "best_fails_other_wins": float(np.mean((y[:, best] == 0) & (others.max(1) == 1))),
        "top3_spread_pts": float(100 * (acc[top3[0]] - acc[top3[2]])),
        "oracle": float(y.max(1).mean()),
    }


def _patterns(m: int) -> tuple[np.ndarray, np.ndarray]:
    pats = np.array(list(itertools.product([0, 1], repeat=m)), dtype=float)  # (2**m, m), column 0 the high bit
    return pats, pats.sum(1).astype(int)


def _rasch_fit(counts: np.ndarray, pats: np.ndarray, k_of: np.ndarray) -> np.ndarray:
    """Conditional-ML prompt strengths b (m,), b[0] = 0, from pattern counts (2**m,)."""
    from scipy.optimize import minimize

    m = pats.shape[1]

    def nll(free):
        b = np.concatenate([[0.0], free])
        s = pats @ b
        out, grad = 0.0, np.zeros(m)
        for k in range(1, m):
            sel = k_of == k
            n_k = counts[sel].sum()
            if n_k == 0:
                continue
            lse = np.logaddexp.reduce(s[sel])
            p = np.exp(s[sel] - lse)
            out -= counts[sel] @ s[sel] - n_k * lse
            grad -= counts[sel] @ pats[sel] - n_k * (p @ pats[sel])
        return out, grad[1:]

    res = minimize(nll, np.zeros(m - 1), jac=True, method="L-BFGS-B")
    return np.concatenate([[0.0], res.x])


def _rasch_g(counts: np.ndarray, b: np.ndarray, pats: np.ndarray, k_of: np.ndarray) -> float:
    s = pats @ b
    g = 0.0
    for k in range(1, pats.shape[1]):
        sel = k_of == k
        n_k = counts[sel].sum()
        if n_k == 0:
            continue
        e = n_k * np.exp(s[sel] - np.logaddexp.reduce(s[sel]))
        o = counts[sel]
        g += 2 * np.sum(np.where(o > 0, o * np.log(np.where(o > 0, o, 1) / e), 0.0))
    return float(g)


def rasch_test(y: np.ndarray, n_boot: int, seed: int) -> dict:
    """Interaction beyond sampling luck in one-answer-per-pair outcomes y (U, m) of 0/1, m <= 8.

    G: likelihood ratio of the observed pattern frequencies given k against the no-interaction
    (conditional logit) model; its null distribution by parametric bootstrap with the fitted strengths.
    excess_per_q = (G - null mean) / questions with 0 < k < m. Also the 'best prompt fails, another
    succeeds' rate observed against its null expectation."""
    m = y.shape[1]
    pats, k_of = _patterns(m)
    code = (y.astype(int) * (1 << np.arange(m - 1, -1, -1))).sum(1)
    counts = np.bincount(code, minlength=2 ** m).astype(float)
    b = _rasch_fit(counts, pats, k_of)
    g_obs = _rasch_g(counts, b, pats, k_of)
    s = pats @ b
    best = int(np.argmax(y.mean(0)))
    fail_win = (pats[:, best] == 0) & (k_of >= 1)
    rng = np.random.default_rng(seed)
    null_g, null_fw = [], []
    n_by_k = [counts[k_of == k].sum() for k in range(m + 1)]
    for _ in range(n_boot):
        sim = np.where((k_of == 0) | (k_of == m), counts, 0.0)
        for k in range(1, m):
            sel = np.flatnonzero(k_of == k)
            sim[sel] = rng.multinomial(int(n_by_k[k]), np.exp(s[sel] - np.logaddexp.reduce(s[sel])))
        null_g.append(_rasch_g(sim, _rasch_fit(sim, pats, k_of), pats, k_of))
        null_fw.append(sim[fail_win].sum() / len(y))
    informative = sum(n_by_k[1:m])
    null_g = np.asarray(null_g)
    return {
        "informative_questions": int(informative),
        "G": g_obs,
        "G_null_mean": float(null_g.mean()),
        "p_value": float((1 + np.sum(null_g >= g_obs)) / (1 + n_boot)),
        "excess_per_q": float((g_obs - null_g.mean()) / informative),
        "best_fails_other_wins": float(counts[fail_win].sum() / len(y)),
        "best_fails_other_wins_null": float(np.mean(null_fw)),
    }


def repeat_noise(first: np.ndarray, second: np.ndarray) -> dict:
    """From two independent answers per pair: how often they disagree, and the split-half reliability
    of each top prompt's advantage over the question mean (0 = pure luck, 1 = no noise)."""
    both = ~np.isnan(second).any(1)
    a, b = first[both], second[both]
    ra = a - a.mean(1, keepdims=True)
    rb = b - b.mean(1, keepdims=True)
    rel = [float(np.corrcoef(ra[:, p], rb[:, p])[0, 1]) for p in range(6)]
    return {"questions": int(both.sum()), "pair_disagreement": float(np.mean(a != b)),
            "contrast_reliability": dict(zip(TRAIN_PROMPTS, np.round(rel, 3).tolist()))}


def answer_style(n_prompts: int = 6) -> dict:
    """GSM8K only: how the training prompts' raw answers on the 1000 test questions look.

    Median words, share showing worked arithmetic ('='), share cut off mid-sentence (no final . ! ? ))."""
    from oirl_fast.collect.published import load_gsm8k_answers, load_prompts

    out = {}
    for p in load_prompts()[:n_prompts]:
        ans = load_gsm8k_answers(p)
        out[p.id] = {"median_words": float(np.median([len(a.split()) for a in ans])),
                     "worked": float(np.mean(["=" in a for a in ans])),
                     "cut_off": float(np.mean([a.rstrip()[-1:] not in ".!?)" for a in ans]))}
    return out


def between_within(first: np.ndarray, second: np.ndarray, cols) -> dict:
    """Disagreement of one answer each from two different prompts (between), and of two answers
    from the same prompt (within, where repeats exist): the part of 'between' that exceeds 'within'
    is a persistent difference between the prompts on that question, the rest is resampling luck."""
    out = {"between": {f"{TRAIN_PROMPTS[i]}/{TRAIN_PROMPTS[j]}": float(np.mean(first[:, i] != first[:, j]))
                       for i, j in itertools.combinations(cols, 2)}}
    both = ~np.isnan(second).any(1)
    if both.any():
        out["within"] = {TRAIN_PROMPTS[i]: float(np.mean(first[both, i] != second[both, i])) for i in cols}
    return out


def feature_diagnostics(y: np.ndarray, steps: np.ndarray, qf: np.ndarray) -> list[dict]:
    """Per gold-step bin (and per count-of-numbers bin): questions, accuracy of each prompt, winner."""
    out = []
    n_num = qf[:, FEATURE_NAMES.index("n_numbers")]
    for name, v, edges in (("gold_steps", steps, [0, 2, 3, 4, 5, 6, 99]), ("n_numbers", n_num, [0, 2, 3, 4, 5, 6, 99])):
        for lo, hi in zip(edges[:-1], edges[1:]):
            m = (v >= lo) & (v < hi)
            if m.sum() < 30:
                continue
            acc = y[m].mean(0)
            out.append({"feature": name, "bin": f"[{lo},{hi})", "n": int(m.sum()),
                        "acc": dict(zip(TRAIN_PROMPTS, acc.round(3).tolist())),
                        "winner": TRAIN_PROMPTS[int(np.argmax(acc))]})
    return out


# ----------------------------------------------------------------------------- cross-fitting


def folds_of(n: int, k: int, seed: int) -> np.ndarray:
    """int (n,): fold of each question group, balanced, random with ``seed``."""
    f = np.arange(n) % k
    np.random.default_rng(seed).shuffle(f)
    return f


def crossfit(d: dict, Q: np.ndarray, Pm: np.ndarray, config: TrainConfig, folds: np.ndarray,
             per_prompt: bool = False, answers: int | None = None, train_share: float = 1.0) -> dict:
    """Cross-fitted picks. Q: float32 (U, dq) query features, Pm: float32 (6, dp) prompt features.

    ``answers`` (1 or 2): train (and choose the best single prompt) on only the first one or two logged
    answers per pair, GSM8K has one, while still scoring against the pooled rates: what label noise
    alone costs on SVAMP/MAWPS. ``train_share``: fit on that random share of each training side's
    questions (all their answers), for the same label budget as one answer per pair.
    Returns per-question values of the pick and of the best single prompt, plus diagnostics."""
    R, C = d["rate"], d["count"].astype(float)
    if answers is None:
        Rt, Ct = R, C
    else:
        stack = np.stack([d["first"], d["second"]][:answers])
        Ct = (~np.isnan(stack)).sum(0).astype(float)
        Rt = np.nansum(stack, 0) / Ct
    U = len(R)
    scores = np.zeros((U, 6))
    best_single = np.zeros(U, int)
    for f in np.unique(folds):
        tr, te = np.flatnonzero(folds != f), np.flatnonzero(folds == f)
        if train_share < 1.0:
            rng = np.random.default_rng(config.seed + int(f))
            tr = np.sort(rng.choice(tr, int(round(train_share * len(tr))), replace=False))
        acc = np.nansum(Rt[tr] * Ct[tr], 0) / Ct[tr].sum(0)
        best_single[te] = int(np.argmax(acc))
        if per_prompt:  # one model per prompt on query features only: no shared trees across prompts
            for p in range(6):
                m = RewardModel(config).fit(Q[tr], Rt[tr, p], Ct[tr, p], groups=tr)
                scores[te, p] = m.predict(Q[te])
            continue
        X = grid_features(Q[tr], Pm)
        y, w = Rt[tr].ravel(), Ct[tr].ravel()
        groups = np.repeat(tr, 6)
        m = RewardModel(config).fit(X, y, w, groups)
        scores[te] = m.predict(grid_features(Q[te], Pm)).reshape(len(te), 6)
    pick = metrics.pick_values(scores, R)
    single = R[np.arange(U), best_single]
    top = np.argmax(scores, 1)
    # the same scores, choosing only among the three prompts best on each training side
    top3 = np.argsort(-np.nansum(R * C, 0))[:3]
    masked = np.full_like(scores, -np.inf)
    masked[:, top3] = scores[:, top3]
    # where the switches go, and what each kind of switch earns (points, over all questions)
    switches = {TRAIN_PROMPTS[p]: {"share": float(np.mean((top == p) & (top != best_single))),
                                   "gain_pts": float(100 * np.sum(np.where((top == p) & (top != best_single),
                                                                           R[:, p] - single, 0.0)) / U)}
                for p in range(6)}
    return {"pick": pick, "single": single, "pick_top3": metrics.pick_values(masked, R), "switches": switches,
            "switch_rate": float(np.mean(top != best_single)), "scores": scores,
            "pair_order": pair_order(scores, R, range(6)), "pair_order_top3": pair_order(scores, R, top3)}


def pair_order(scores: np.ndarray, R: np.ndarray, cols) -> float:
    """Among a question's prompt pairs (within ``cols``) whose outcomes differ, the share the scores order
    right (ties count half): 0.5 is no information about which prompt wins on that question."""
    hits, n = 0.0, 0
    for p, q in itertools.combinations(list(cols), 2):
        diff = R[:, p] - R[:, q]
        m = diff != 0
        ds = scores[m, p] - scores[m, q]
        hits += np.sum(np.where(ds == 0, 0.5, (np.sign(ds) == np.sign(diff[m])).astype(float)))
        n += int(m.sum())
    return float(hits / n)


def neighbour_cosine(emb: np.ndarray, folds: np.ndarray, block: int = 2048) -> np.ndarray:
    """float (U,): each question's highest cosine similarity to a question of another fold, i.e. to
    the training side of the model that picks for it (templated near-duplicates score ~1)."""
    e = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
    out = np.empty(len(e))
    for s in range(0, len(e), block):
        sim = e[s:s + block] @ e.T
        sim[folds[s:s + block, None] == folds[None, :]] = -np.inf
        out[s:s + block] = sim.max(1)
    return out


def summarise(name: str, res: dict, base: dict | None, seed: int) -> dict:
    gain = 100 * (res["pick"].mean() - res["single"].mean())
    lo, hi = metrics.paired_bootstrap_ci(res["pick"], res["single"], seed=seed)
    row = {"variant": name, "pick": float(res["pick"].mean()), "single": float(res["single"].mean()),
           "gain_pts": float(gain), "ci": [100 * lo, 100 * hi], "switch_rate": res["switch_rate"],
           "switches": res["switches"], "pair_order": res["pair_order"], "pair_order_top3": res["pair_order_top3"],
           "top3_gain_pts": float(100 * (res["pick_top3"].mean() - res["single"].mean())),
           "top3_ci": [100 * x for x in metrics.paired_bootstrap_ci(res["pick_top3"], res["single"], seed=seed)]}
    if "near" in res:  # the gain on questions with a near-duplicate on the training side, and on the rest
        for key, m in (("near_dup", res["near"]), ("no_near_dup", ~res["near"])):
            if m.sum() > 1:
                ci = metrics.paired_bootstrap_ci(res["pick"][m], res["single"][m], seed=seed)
                row[key] = {"questions": int(m.sum()),
                            "gain_pts": float(100 * (res["pick"][m].mean() - res["single"][m].mean())),
                            "ci": [100 * ci[0], 100 * ci[1]]}
    if base is not None:
        lo2, hi2 = metrics.paired_bootstrap_ci(res["pick"], base["pick"], seed=seed)
        row["vs_base_pts"] = float(100 * (res["pick"].mean() - base["pick"].mean()))
        row["vs_base_ci"] = [100 * lo2, 100 * hi2]
    return row


# ----------------------------------------------------------------------------- variants

# name -> (query embedder or None, add query features, add gold steps (diagnostic only), config changes,
#          per-prompt models, what it tests); ONE_ANSWER variants train on one answer per pair (SVAMP/MAWPS)
VARIANTS = {
    "base": ("static", False, False, {}, False, "the project's model: static query emb || prompt emb"),
    "qf": ("static", True, False, {}, False, "+ cheap query features appended to the query embedding"),
    "qf_only": (None, True, False, {}, False, "query features alone (no query embedding) || prompt emb"),
    "minilm": ("minilm", False, False, {}, False, "MiniLM query and prompt embeddings"),
    "minilm_qf": ("minilm", True, False, {}, False, "MiniLM + query features"),
    "reg": ("static", True, False, {"num_leaves": 7, "min_child_weight": 200.0, "colsample": 0.3}, False,
            "static + qf, strong regularisation: 7 leaves, 200 rows per leaf"),
    "slow": ("static", True, False, {"num_leaves": 15, "learning_rate": 0.01, "n_estimators": 1500,
                                     "early_stopping_rounds": 100}, False,
             "static + qf, many small trees: lr 0.01, up to 1500 trees of 15 leaves"),
    "per_prompt": ("static", True, False, {}, True, "one model per prompt on static + qf"),
    "gold_steps": ("static", True, True, {}, False,
                   "DIAGNOSTIC ONLY (not computable at scoring): + the gold solution's step count"),
}
VARIANTS["base_one_answer"] = (*VARIANTS["base"][:5], "base trained on one answer per pair (SVAMP/MAWPS only)")
VARIANTS["base_two_answers"] = (*VARIANTS["base"][:5], "base trained on two answers per pair (SVAMP/MAWPS only)")
VARIANTS["base_quarter"] = (*VARIANTS["base"][:5],
                             "base on a random 1/4 of the training questions, all answers (SVAMP/MAWPS only)")
ONE_ANSWER = {"base_one_answer": 1, "base_two_answers": 2, "base_quarter": None}
QUICK_VARIANTS = ["base", "qf", "qf_only"]


def embeddings(kind: str, texts: list[str], cache_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """float32 query (U, d) and prompt (6, d) embeddings through the project's cached Embedder."""
    from oirl_fast.collect.published import load_prompts

    enc = make_encoder(kind, cache_dir, device="cpu")
    emb = Embedder(cache_dir=cache_dir, encoder=enc, progress=sys.stderr.isatty())
    ptexts = {p.id: p.text for p in load_prompts()}
    return emb.embed(texts), emb.embed([ptexts[p] for p in TRAIN_PROMPTS])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dataset", default="gsm8k", choices=["gsm8k", "svamp", "mawps"])
    ap.add_argument("--variants", default=None, help=f"comma-separated, from: {', '.join(VARIANTS)} (default: all)")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0, help="fold assignment, LightGBM and bootstrap seed")
    ap.add_argument("--quick", action="store_true",
                    help="3,000 questions, 120 trees at most, variants base,qf,qf_only, 50 null draws")
    ap.add_argument("--compare", default="svamp,mawps",
                    help="datasets whose noise and prompt diagnostics are printed alongside ('' for none)")
    ap.add_argument("--cache-dir", type=Path, default=REPO / ".oirl-cache", help="embedding cache folder")
    ap.add_argument("--json", type=Path, default=None, help="also write every figure to this JSON file")
    args = ap.parse_args(argv)
    t0 = time.time()
    names = args.variants.split(",") if args.variants else (QUICK_VARIANTS if args.quick else list(VARIANTS))
    unknown = [v for v in names if v not in VARIANTS]
    if unknown:
        ap.error(f"unknown variant(s) {unknown}")
    report: dict = {"dataset": args.dataset, "folds": args.folds, "seed": args.seed, "quick": args.quick,
                    "diagnostics": {}, "variants": []}
    n_boot = 50 if args.quick else 200

    print(f"== diagnostics (one answer per question-prompt pair){' [quick]' if args.quick else ''}")
    data = {}
    compare = [c for c in args.compare.split(",") if c and c != args.dataset]
    for ds in [args.dataset, *compare]:
        d = data[ds] = load(ds)
        y = d["first"]
        pd_ = prompt_diagnostics(y)
        rt = rasch_test(y, n_boot, args.seed)
        top3 = [TRAIN_PROMPTS.index(p) for p in pd_["top3"]]
        rt3 = rasch_test(y[:, top3], n_boot, args.seed)
        entry = {"questions": len(y), "prompts": pd_, "rasch": rt, "rasch_top3": rt3}
        if not np.isnan(d["second"]).all():
            entry["repeats"] = repeat_noise(d["first"], d["second"])
        report["diagnostics"][ds] = entry
        print(f"{ds}: {len(y)} questions; accuracy {pd_['accuracy']}; oracle {pd_['oracle']:.3f}")
        print(f"  top 3 {pd_['top3']} within {pd_['top3_spread_pts']:.1f} pts; their outcome correlation "
              f"{pd_['top3_corr']:.2f} raw, {pd_['top3_resid_corr']:+.2f} after removing the question mean")
        print(f"  best prompt fails and another succeeds: {rt['best_fails_other_wins']:.3f} "
              f"(no-interaction null {rt['best_fails_other_wins_null']:.3f})")
        print(f"  interaction beyond luck (Rasch LR): G {rt['G']:.0f} vs null {rt['G_null_mean']:.0f}, "
              f"p {rt['p_value']:.3f}, excess {1000 * rt['excess_per_q']:.1f} per 1000 informative questions "
              f"({rt['informative_questions']})")
        print(f"  same, top 3 prompts only: G {rt3['G']:.1f} vs null {rt3['G_null_mean']:.1f}, p {rt3['p_value']:.3f}, "
              f"excess {1000 * rt3['excess_per_q']:.1f} per 1000 ({rt3['informative_questions']}); best of them fails "
              f"and another succeeds {rt3['best_fails_other_wins']:.3f} (null {rt3['best_fails_other_wins_null']:.3f})")
        bw = entry["disagreement"] = between_within(d["first"], d["second"], top3)
        print("  two different top prompts, one answer each, disagree on "
              + ", ".join(f"{k} {v:.3f}" for k, v in bw["between"].items())
              + ("; two answers of the same prompt disagree on " + ", ".join(f"{k} {v:.3f}" for k, v in bw["within"].items())
                 if "within" in bw else "; (no repeats: the same-prompt rate cannot be measured)"))
        if ds == "gsm8k":
            st = entry["answer_style"] = answer_style()
            print("  raw answers on the 1000 test questions (median words / share with '=' / cut off): "
                  + ", ".join(f"{k} {v['median_words']:.0f}/{v['worked']:.2f}/{v['cut_off']:.2f}" for k, v in st.items()))
        if "repeats" in entry:
            rp = entry["repeats"]
            print(f"  two answers per pair ({rp['questions']} questions): they disagree on "
                  f"{rp['pair_disagreement']:.3f} of pairs; split-half reliability of each prompt's advantage "
                  f"{rp['contrast_reliability']}")
    d = data[args.dataset]
    if args.quick:
        d = subsample(d, min(3000, len(d["texts"])), args.seed)
    qf = query_features(d["texts"])
    fd = feature_diagnostics(d["first"], d["steps"], qf)
    report["diagnostics"][args.dataset]["by_feature"] = fd
    print(f"\n{args.dataset}: accuracy of each prompt by question feature (diagnostic):")
    for row in fd:
        print(f"  {row['feature']:10s} {row['bin']:8s} n={row['n']:5d} winner {row['winner']:6s} {row['acc']}")

    print(f"\n== cross-fitted best of 6 vs best single ({args.folds} grouped folds, {len(d['texts'])} questions)")
    folds = folds_of(len(d["texts"]), args.folds, args.seed)
    cache: dict[str, tuple] = {}
    base_res = None
    near = None
    for name in names:
        kind, use_qf, use_steps, changes, per_prompt, what = VARIANTS[name]
        cfg = TrainConfig(nthread=1, seed=args.seed, **changes)
        if args.quick:
            cfg.n_estimators = min(cfg.n_estimators, 120)
        parts, pm = [], None
        if kind is not None:
            if kind not in cache:
                cache[kind] = embeddings(kind, d["texts"], args.cache_dir)
            parts.append(cache[kind][0])
            pm = cache[kind][1]
        else:
            pm = cache.setdefault("static", None) or embeddings("static", d["texts"], args.cache_dir)
            cache["static"] = pm
            pm = pm[1]
        if use_qf:
            parts.append(qf)
        if use_steps:
            parts.append(d["steps"][:, None].astype(np.float32))
        Q = np.ascontiguousarray(np.hstack(parts), dtype=np.float32)
        t = time.time()
        if name in ONE_ANSWER and np.isnan(d["second"]).all():
            print(f"{name:11s} skipped: {args.dataset} has one answer per pair already")
            continue
        res = crossfit(d, Q, pm, cfg, folds, per_prompt=per_prompt, answers=ONE_ANSWER.get(name),
                       train_share=0.25 if name == "base_quarter" else 1.0)
        if "static" in cache:
            if near is None:
                near = neighbour_cosine(cache["static"][0], folds) >= 0.95
                print(f"questions with a training-side neighbour at static cosine >= 0.95: {int(near.sum())} "
                      f"of {len(near)}")
            res["near"] = near
        row = summarise(name, res, base_res, args.seed)
        row["what"], row["seconds"] = what, round(time.time() - t, 1)
        report["variants"].append(row)
        nd = "".join(f"\n{'':11s} {k.replace('_', ' ')} ({v['questions']}): {v['gain_pts']:+.2f} "
                     f"[{v['ci'][0]:+.2f}, {v['ci'][1]:+.2f}]" for k in ("near_dup", "no_near_dup")
                     if (v := row.get(k)))
        vs = (f"  vs base {row['vs_base_pts']:+.2f} [{row['vs_base_ci'][0]:+.2f}, {row['vs_base_ci'][1]:+.2f}]"
              if "vs_base_pts" in row else "")
        print(f"{name:11s} pick {row['pick']:.4f} single {row['single']:.4f}  gain {row['gain_pts']:+.2f} pts "
              f"[{row['ci'][0]:+.2f}, {row['ci'][1]:+.2f}]  switches {row['switch_rate']:.2f}  pair order "
              f"{row['pair_order']:.3f} (top 3: {row['pair_order_top3']:.3f}){vs}  ({row['seconds']:.0f} s)  {what}\n"
              f"{'':11s} only among the 3 best training prompts: gain {row['top3_gain_pts']:+.2f} "
              f"[{row['top3_ci'][0]:+.2f}, {row['top3_ci'][1]:+.2f}]; switches to "
              + ", ".join(f"{p} {v['share']:.2f} ({v['gain_pts']:+.2f} pts)" for p, v in row["switches"].items()
                          if v["share"] > 0) + nd, flush=True)
        if name == "base":
            base_res = res
    print(f"\ntotal {time.time() - t0:.0f} s")
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
