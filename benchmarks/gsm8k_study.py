"""Why per-query prompt selection gains nothing on GSM8K: diagnostics and cross-fitted variants.

    python benchmarks/gsm8k_study.py                      # GSM8K, all variants, 5 folds (36 min on 2 busy cores)
    python benchmarks/gsm8k_study.py --quick              # 3,000 questions, 3 variants, 120 trees (1.5-2.5 min)
    python benchmarks/gsm8k_study.py --dataset svamp --compare "" --variants base,base_one_answer,qf
    python benchmarks/gsm8k_study.py --json study.json    # also write every figure as JSON

Variants (``--variants``): the plain model (``base``), query features appended to the query embedding
(``qf``) or instead of it (``qf_only``), MiniLM embeddings, strong regularisation (``reg``), many small
trees (``slow``), one model per prompt, the gold step count as a diagnostic-only input, and, for
SVAMP/MAWPS, training on one or two answers per pair or on a quarter of the questions.

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
Each variant's gain is also split by whether the question has a near-duplicate (static cosine >= 0.95)
among the other folds' questions, i.e. in the training side of the model that picks for it.
Embeddings come through ``oirl_fast.embed.Embedder`` with its on-disk cache (``--cache-dir``).
"""
from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

import numpy as np

from oirl_fast import metrics
from oirl_fast.embed import Embedder
from oirl_fast.encoders import make_encoder
from oirl_fast.features import grid_features
from oirl_fast.train.reward_model import RewardModel, TrainConfig

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gsm8k_diagnostics import (TRAIN_PROMPTS, answer_style, between_within, feature_diagnostics,  # noqa: E402
                               load, prompt_diagnostics, query_features, rasch_test, repeat_noise, subsample)

REPO = Path(__file__).resolve().parents[1]


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
