"""End to end: raw-text JSONL queries in, picks out, through `oirl score`'s own code path.

Trains two small GSM8K reward models (static and MiniLM embedder; or takes --model-static
/ --model-minilm), writes GSM8K questions as JSONL, takes all 16 published prompts as
candidates (``--prompts``, embedded once with the model's embedder), and runs
``oirl_fast.scoring.stream.score_file`` (what `oirl score` calls) with a cold embedding cache (a
fresh temporary cache folder; the static embedder's one-time build is reused from the
user cache, or built there first, and not counted). Prints each stage's busy seconds
and share of the wall time (read+parse, embed, kernel, format+write), the serial loop
against the pipelined one, and the peak memory of a separate `oirl score` process.

    python benchmarks/score_end_to_end.py --quick

ends with ``queries_per_s=… pairs_per_s=… static_vs_minilm=… kernel_share=…`` (static
embedder, pipelined; static_vs_minilm is the ratio of end-to-end queries/s).

``--distinct`` is the case the 50,000 queries/s target is set on: 200,000 distinct GSM8K-style
queries (the training questions with every number redrawn, so no two texts are alike and the
embedder meets new words as real traffic brings them), 16 candidates, the static embedder only,
a cold embedding cache, and the whole `oirl score` process timed (cold start: imports, model
load and numba's cached compile included). It ends with

    queries_per_s=… inproc_queries_per_s=… pairs_per_s=… embed_share=… read_share=… write_share=…
    kernel_share=… embed_s=… read_s=… write_s=… kernel_s=… peak_rss_mb=… tree_pss_mb=… processes=…
    one_process_queries_per_s=…

``queries_per_s`` is the `oirl score` process as run by default (its forked workers, one per core:
``processes``; ``--workers N`` sets it) over its wall; ``one_process_queries_per_s`` the same with
``--workers 1``. The stage seconds and their shares of the wall come from the serial in-process run,
one process (``inproc_queries_per_s``). ``peak_rss_mb`` is the `oirl score` process's high-water mark,
``tree_pss_mb`` the peak of the proportional set size summed over it and its workers (sampled every
20 ms; shared pages split among the processes that map them). ``--distinct --quick`` (20,000 queries, a model of 300 questions)
runs in well under a minute on a quiet machine.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from random_queries import distinct_questions  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def gsm8k_questions():
    import pyarrow.compute as pc

    from oirl_fast.collect.published import import_published

    log = import_published("gsm8k")
    test = log.filter(pc.equal(log.column("split"), "test"))
    train = log.filter(pc.equal(log.column("split"), "train"))
    return log, sorted(set(train.column("query").to_pylist())), sorted(set(test.column("query").to_pylist()))


def train_model(log, spec, out, cache_dir, n_questions):
    """A small GSM8K reward model (grouped protocol, default LightGBM config) on ``n_questions``."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    from oirl_fast.embed import Embedder
    from oirl_fast.encoders import make_encoder
    from oirl_fast.train.fit import train_artifact
    from oirl_fast.splits import Protocol
    from oirl_fast.train.reward_model import TrainConfig

    train = log.filter(pc.equal(log.column("split"), "train"))
    groups = sorted(set(train.column("group").to_pylist()))
    keep = np.random.default_rng(0).choice(groups, size=min(n_questions, len(groups)), replace=False)
    table = train.filter(pc.is_in(train.column("group"), pa.array(keep)))
    emb = Embedder(cache_dir=cache_dir, progress=False, encoder=make_encoder(spec, cache_dir))
    t0 = time.perf_counter()
    art = train_artifact(table, Protocol("grouped"), TrainConfig(), emb, out, compile_library=False, log=lambda *_: None)
    print(f"  trained {spec} model: {art.metadata.best_iteration} trees, {time.perf_counter() - t0:.1f}s")
    return out


def write_queries(path, questions, n):
    """``n`` JSONL queries cycling through ``questions``; later passes get a suffix so every text is new."""
    write_texts(path, [questions[i % len(questions)] if i < len(questions)
                       else f"{questions[i % len(questions)]} (variant {i // len(questions)})" for i in range(n)])


def write_texts(path, texts):
    """One JSONL query per text, ids q0, q1, ..."""
    with open(path, "w", encoding="utf-8") as fh:
        for i, q in enumerate(texts):
            fh.write(json.dumps({"id": f"q{i}", "query": q}) + "\n")


def write_prompts(path, log):
    """The 16 published prompts as a --prompts file."""
    from oirl_fast.splits import prompt_catalog

    with open(path, "w", encoding="utf-8") as fh:
        for pid, text in prompt_catalog(log):
            fh.write(json.dumps({"id": pid, "text": text}) + "\n")


def run(model, inp, out, cache_dir, prompts, pipeline=True):
    from oirl_fast.scoring.stream import score_file

    t0 = time.perf_counter()
    s = score_file(model, inp, out, prompts=prompts, cache_dir=cache_dir, progress=False, pipeline=pipeline)
    wall = time.perf_counter() - t0
    stages = {"read": s.read_seconds, "embed": s.embed_seconds, "kernel": s.score_seconds,
              "write": s.format_seconds + s.write_seconds}
    return {"wall": wall, "lines": s.scored + s.errors, "pairs": s.pairs, "stages": stages, "route": s.route}


def encoder_rates(static_dir, questions, n=20_000):
    """Texts/s of the static encoder's ``encode`` and of model2vec's own ``StaticModel.encode`` on the
    same ``n`` GSM8K questions, in this process, each from a fresh encoder (nothing memorised)."""
    from oirl_fast.encoders import StaticEncoder

    texts = [questions[i % len(questions)] for i in range(n)]
    enc = StaticEncoder(static_dir)
    t0 = time.perf_counter()
    ours = enc.encode(texts)
    t_ours = time.perf_counter() - t0
    t0 = time.perf_counter()
    ref = enc._model.encode(texts, use_multiprocessing=False, show_progress_bar=False)
    t_ref = time.perf_counter() - t0
    same = bool((ours == ref.astype("float32")).all())
    print(f"static encoder alone, {n:,} GSM8K questions: {n / t_ours:,.0f} texts/s; model2vec StaticModel.encode "
          f"{n / t_ref:,.0f} texts/s ({t_ref / t_ours:.1f}x; vectors identical: {same})")


def show(name, r):
    share = " ".join(f"{k} {v:.2f}s ({v / r['wall']:.0%})" for k, v in r["stages"].items())
    print(f"{name:<24} {r['lines']:>7} queries {r['wall']:7.2f}s  {r['lines'] / r['wall']:9,.0f} queries/s  "
          f"{r['pairs'] / r['wall']:11,.0f} pairs/s | {share}")


# The child reports its own high-water mark (VmHWM belongs to the exec'ed image; the parent's
# RUSAGE_CHILDREN would count the pages the forked child shared with this big process).
_CHILD = """
import atexit, resource, sys
def peak():
    try:
        kb = next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmHWM'))
    except (OSError, StopIteration):
        kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    sys.stdout.write(f'PEAK_RSS_KB={kb}\\n')
atexit.register(peak)
sys.argv = ['oirl', *sys.argv[1:]]
from oirl_fast.cli import main
main()
"""


def _tree(pid: int) -> list[int]:
    """``pid`` and its descendants (the forked workers of `oirl score`)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            todo += [int(c) for c in Path(f"/proc/{p}/task/{p}/children").read_text().split()]
        except OSError:
            pass
    return out


def _tree_memory(pid: int) -> tuple[int, int]:
    """(summed RSS, summed PSS) in KiB of the process tree now. PSS splits each shared page among the
    processes mapping it, so its sum is the tree's real footprint; the RSS sum counts shared pages once per
    process (an upper bound)."""
    rss = pss = 0
    for p in _tree(pid):
        try:
            for line in Path(f"/proc/{p}/smaps_rollup").read_text().splitlines():
                if line.startswith("Rss:"):
                    rss += int(line.split()[1])
                elif line.startswith("Pss:"):
                    pss += int(line.split()[1])
        except (OSError, ValueError):
            pass
    return rss, pss


def peak_rss_of_cli(model, inp, out, cache_dir, prompts, workers=None):
    """`oirl score` in its own process (imports included): (its peak RSS, wall, and the peaks of the summed
    RSS and PSS of it and its forked workers, sampled every 20 ms; MiB, s). ``workers``: --workers
    (None: its default, one process per core)."""
    t0 = time.perf_counter()
    cmd = [sys.executable, "-c", _CHILD, "score", str(model), "--in", str(inp), "--out", str(out),
           "--prompts", str(prompts), "--cache-dir", str(cache_dir), *(["--workers", str(workers)] if workers else [])]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    tree_rss = tree_pss = 0
    while proc.poll() is None:
        rss, pss = _tree_memory(proc.pid)
        tree_rss, tree_pss = max(tree_rss, rss), max(tree_pss, pss)
        time.sleep(0.02)
    stdout, stderr = proc.communicate()
    wall = time.perf_counter() - t0
    if proc.returncode:
        raise SystemExit(f"oirl score failed ({proc.returncode}):\n{stderr}")
    kb = int(stdout.rsplit("PEAK_RSS_KB=", 1)[1].split()[0])
    return {"rss": kb / 1024, "wall": wall, "tree_rss": tree_rss / 1024, "tree_pss": tree_pss / 1024,
            "processes": int(stderr.split(" processes")[0].rsplit(" ", 1)[1]) if " processes" in stderr else 1}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="20,000 static and 300 MiniLM queries, small models")
    ap.add_argument("--queries", type=int, default=None, help="queries for the static embedder [100,000; quick 20,000]")
    ap.add_argument("--minilm-queries", type=int, default=None, help="queries for MiniLM [2,000; quick 300]")
    ap.add_argument("--train-questions", type=int, default=None, help="GSM8K questions per trained model [2,000; quick 600]")
    ap.add_argument("--model-static", type=Path, help="a model trained with --embedder static (skips training)")
    ap.add_argument("--model-minilm", type=Path, help="a model trained with --embedder minilm (skips training)")
    ap.add_argument("--distinct", action="store_true",
                    help="the target's case: distinct queries (numbers redrawn), static embedder only, the whole "
                         "`oirl score` process timed [200,000 queries; quick 20,000]")
    ap.add_argument("--workers", type=int, default=None,
                    help="--distinct: `oirl score --workers` for the timed process [its default: one per core]")
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = ap.parse_args()
    if args.distinct:
        return main_distinct(args)
    n_static = args.queries or (20_000 if args.quick else 100_000)
    n_minilm = args.minilm_queries or (300 if args.quick else 2_000)
    n_train = args.train_questions or (600 if args.quick else 2_000)

    from oirl_fast.embed import default_cache_dir
    from oirl_fast.encoders import build_static

    tmp = Path(tempfile.mkdtemp(prefix="oirl-e2e-"))
    try:
        t0 = time.perf_counter()
        static_dir = build_static(default_cache_dir(), log=print)  # one-time per machine, not a cache of texts
        print(f"static embedder ready in {time.perf_counter() - t0:.1f}s ({static_dir})")
        log, train_q, test_q = gsm8k_questions()
        train_cache, cold, warm = tmp / "train-cache", tmp / "cold-cache", tmp / "warm-cache"
        for c in (train_cache, cold, warm):
            (c / "encoders").mkdir(parents=True)
            shutil.copytree(static_dir, c / "encoders" / static_dir.name)
        models = {}
        for spec, given in (("static", args.model_static), ("minilm", args.model_minilm)):
            models[spec] = given or train_model(log, spec, tmp / f"model-{spec}", train_cache, n_train)

        # test questions first (never trained on), then the training questions, then variants
        questions = test_q + train_q
        inp_s, inp_m = tmp / "static.jsonl", tmp / "minilm.jsonl"
        write_queries(inp_s, questions, n_static)
        write_queries(inp_m, test_q, n_minilm)
        prompts = tmp / "prompts.jsonl"
        write_prompts(prompts, log)
        print(f"queries: {n_static} (static), {n_minilm} (MiniLM; GSM8K test questions, none in its training "
              f"set, so the cold cache holds none of them); 16 candidates (--prompts); cold embedding cache {cold}")
        print(f"{'':<24} stage busy seconds (share of wall; stages overlap when pipelined)")

        # warm-up: imports and the numba compile happen once per process, not per job
        write_queries(tmp / "warm.jsonl", questions, 64)
        for spec in models:
            run(models[spec], tmp / "warm.jsonl", tmp / "warm.out.jsonl", warm, prompts)
        encoder_rates(static_dir, questions)
        results = {}
        results["static serial"] = run(models["static"], inp_s, tmp / "s0.jsonl", cold, prompts, pipeline=False)
        show("static, serial loop", results["static serial"])
        results["static"] = run(models["static"], inp_s, tmp / "s1.jsonl", cold, prompts)
        show("static, pipelined", results["static"])
        same = (tmp / "s0.jsonl").read_bytes() == (tmp / "s1.jsonl").read_bytes()
        print(f"pipelined output byte-identical to serial: {same}")
        results["minilm"] = run(models["minilm"], inp_m, tmp / "m1.jsonl", cold, prompts)
        show("minilm, pipelined", results["minilm"])

        cli = peak_rss_of_cli(models["static"], inp_s, tmp / "cli.jsonl", cold, prompts, workers=1)
        rss, wall = cli["rss"], cli["wall"]
        print(f"`oirl score` process, static, {n_static} queries: peak RSS {rss:.0f} MiB, wall {wall:.1f}s "
              f"including start-up (stated bound 512 MiB: {'within' if rss <= 512 else 'EXCEEDED'})")

        st, mi = results["static"], results["minilm"]
        qps = st["lines"] / st["wall"]
        ratio = qps / (mi["lines"] / mi["wall"])
        print(f"pipelined vs serial (static): {results['static serial']['wall'] / st['wall']:.2f}x")
        print(f"queries_per_s={qps:.0f} pairs_per_s={st['pairs'] / st['wall']:.0f} "
              f"static_vs_minilm={ratio:.1f} kernel_share={st['stages']['kernel'] / st['wall']:.3f}")
    finally:
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def main_distinct(args):
    """--distinct: see the module doc."""
    n = args.queries or (20_000 if args.quick else 200_000)
    n_train = args.train_questions or (300 if args.quick else 2_000)

    from oirl_fast.embed import default_cache_dir
    from oirl_fast.encoders import build_static

    tmp = Path(tempfile.mkdtemp(prefix="oirl-e2e-"))
    try:
        static_dir = build_static(default_cache_dir(), log=print)  # one-time per machine, not a cache of texts
        log, train_q, test_q = gsm8k_questions()
        caches = {name: tmp / name for name in ("train-cache", "warm-cache", "cold-1", "cold-2", "cold-cli", "cold-cli1")}
        for c in caches.values():
            (c / "encoders").mkdir(parents=True)
            shutil.copytree(static_dir, c / "encoders" / static_dir.name)
        model = args.model_static or train_model(log, "static", tmp / "model-static", caches["train-cache"], n_train)
        t0 = time.perf_counter()
        texts = distinct_questions(train_q, n)
        inp = tmp / "distinct.jsonl"
        write_texts(inp, texts)
        prompts = tmp / "prompts.jsonl"
        write_prompts(prompts, log)
        print(f"queries: {n:,} distinct (the {len(train_q):,} GSM8K training questions with their numbers redrawn; "
              f"written in {time.perf_counter() - t0:.1f}s); 16 candidates (--prompts); static embedder; "
              f"cold embedding caches")
        del texts
        write_texts(tmp / "warm.jsonl", distinct_questions(test_q, 64, seed=1))
        run(model, tmp / "warm.jsonl", tmp / "warm.out.jsonl", caches["warm-cache"], prompts)  # imports, numba load

        print(f"{'':<24} stage busy seconds (share of wall; stages overlap when pipelined)")
        serial = run(model, inp, tmp / "s0.jsonl", caches["cold-1"], prompts, pipeline=False)
        show("in-process, serial", serial)
        piped = run(model, inp, tmp / "s1.jsonl", caches["cold-2"], prompts, pipeline=True)
        show("in-process, pipelined", piped)
        same = (tmp / "s0.jsonl").read_bytes() == (tmp / "s1.jsonl").read_bytes()
        one = peak_rss_of_cli(model, inp, tmp / "cli1.jsonl", caches["cold-cli1"], prompts, workers=1)
        cli = peak_rss_of_cli(model, inp, tmp / "cli.jsonl", caches["cold-cli"], prompts, workers=args.workers)
        rss, wall = cli["rss"], cli["wall"]
        same_cli = (tmp / "cli.jsonl").read_bytes() == (tmp / "s1.jsonl").read_bytes() == (tmp / "cli1.jsonl").read_bytes()
        print(f"pipelined output byte-identical to serial: {same}; `oirl score`'s (1 and {cli['processes']} "
              f"processes) to in-process: {same_cli}")
        print(f"pipelined vs serial: {serial['wall'] / piped['wall']:.2f}x")
        print(f"`oirl score --workers 1`, cold start: wall {one['wall']:.2f}s, {n / one['wall']:,.0f} queries/s; peak "
              f"RSS {one['rss']:.0f} MiB")
        print(f"`oirl score` ({cli['processes']} processes), cold start, {n:,} distinct queries: wall {wall:.2f}s "
              f"including start-up, {n / wall:,.0f} queries/s ({one['wall'] / wall:.2f}x one process); peak RSS "
              f"{rss:.0f} MiB this process, {cli['tree_pss']:.0f} MiB PSS summed over its processes "
              f"({cli['tree_rss']:.0f} MiB RSS summed, shared pages counted in each) (bound 512 MiB: "
              f"{'within' if max(rss, cli['tree_pss']) <= 512 else 'EXCEEDED'})")
        st, w = serial["stages"], serial["wall"]  # one process's loop (serial, the default; what each worker runs)
        print(f"queries_per_s={n / wall:.0f} inproc_queries_per_s={n / w:.0f} pairs_per_s={serial['pairs'] / w:.0f} "
              f"embed_share={st['embed'] / w:.3f} read_share={st['read'] / w:.3f} write_share={st['write'] / w:.3f} "
              f"kernel_share={st['kernel'] / w:.3f} embed_s={st['embed']:.3f} read_s={st['read']:.3f} "
              f"write_s={st['write']:.3f} kernel_s={st['kernel']:.3f} peak_rss_mb={rss:.0f} "
              f"tree_pss_mb={cli['tree_pss']:.0f} processes={cli['processes']} one_process_queries_per_s={n / one['wall']:.0f}")
    finally:
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
