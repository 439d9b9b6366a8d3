"""The near-duplicate vote, rerank's default policy: it switches (and gains) where templated near-duplicates
were logged with outcomes that differ by prompt, and falls back to the best fixed prompt everywhere else."""
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from oirl_fast.reranking import neighbours as nb

D = 48


def _clusters(n_clusters: int, size: int, rng, spread: float):
    """Unit vectors (n_clusters * size, D): ``size`` members around each random centre; cosine to the centre
    about 1 - spread**2 * D / 2 (tiny ``spread``: templated near-duplicates; large: unrelated questions)."""
    centres = rng.normal(size=(n_clusters, D))
    x = np.repeat(centres / np.linalg.norm(centres, axis=1, keepdims=True), size, axis=0)
    return nb.unit_rows(x + spread * rng.normal(size=x.shape))


def _outcomes(cluster: np.ndarray, winner: np.ndarray, rng, answers: int = 4):
    """(wins, count) float (n, 3): prompt 0 right 60% of the time; the cluster's winner (1 or 2) 90%, else 30%."""
    n = len(cluster)
    p = np.full((n, 3), 0.3)
    p[:, 0] = 0.6
    p[np.arange(n), winner[cluster]] = 0.9
    wins = rng.binomial(answers, p).astype(float)
    return wins, np.full((n, 3), float(answers))


def _side(vectors, cluster, winner, train, test, rng):
    wins, count = _outcomes(cluster, winner, rng)
    prior = nb.pooled_prior(wins[train], count[train])
    return {"nbr": nb.near_neighbours(vectors[test], vectors[train], min(nb.COSINES)), "wins": wins[train],
            "count": count[train], "prior": prior, "fixed": np.full(len(test), int(np.argmax(prior))),
            "outcome": wins[test] / count[test]}


@pytest.mark.parametrize("seed", range(3))
def test_planted_near_duplicates_switch_and_gain(seed):
    rng = np.random.default_rng(seed)
    n_clusters, size = 150, 4
    vectors = _clusters(n_clusters, size, rng, spread=0.01)
    cluster = np.repeat(np.arange(n_clusters), size)
    winner = rng.choice([0, 1, 2], size=n_clusters, p=[0.4, 0.3, 0.3])
    member = np.tile(np.arange(size), n_clusters)
    # inner folds: members 0-2 of every cluster, each left out in turn; the test: member 3
    sides = [_side(vectors, cluster, winner, np.flatnonzero((member != j) & (member != 3)),
                   np.flatnonzero(member == j), rng) for j in range(3)]
    choice = nb.choose_vote(sides)
    assert choice["cosine"] is not None and choice["inner_gain"] > 0.05
    test = _side(vectors, cluster, winner, np.flatnonzero(member != 3), np.flatnonzero(member == 3), rng)
    pick, near = nb.apply_vote(test["nbr"], test["wins"], test["count"], test["prior"], test["fixed"], choice)
    assert near.all()  # every test question has its cluster's other members on the training side
    rows = np.arange(len(pick))
    gain = (test["outcome"][rows, pick] - test["outcome"][rows, test["fixed"]]).mean()
    assert gain > 0.1  # about 0.6 of the clusters have a winner other than prompt 0, worth +0.3 each
    w = winner[cluster[member == 3]]
    switched = pick != test["fixed"]
    # it switches where another prompt wins the cluster, to that prompt, and (almost) nowhere else
    assert (pick[switched] == w[switched]).mean() > 0.9
    assert switched[w != test["fixed"]].mean() > 0.8
    assert switched[w == test["fixed"]].mean() < 0.1


@pytest.mark.parametrize("seed", range(3))
def test_no_near_duplicates_fall_back_everywhere(seed):
    """The same outcomes (clusters with winners), but no question has a near-duplicate: the vote has nothing
    to go on, chooses "never switch" on the inner folds and keeps the fixed prompt on every test question."""
    rng = np.random.default_rng(seed)
    n_clusters, size = 150, 4
    vectors = _clusters(n_clusters * size, 1, rng, spread=0.0)  # unrelated questions: cosines about 0 +- 0.15
    cluster = np.repeat(np.arange(n_clusters), size)
    winner = rng.choice([0, 1, 2], size=n_clusters, p=[0.4, 0.3, 0.3])
    member = np.tile(np.arange(size), n_clusters)
    sides = [_side(vectors, cluster, winner, np.flatnonzero((member != j) & (member != 3)),
                   np.flatnonzero(member == j), rng) for j in range(3)]
    choice = nb.choose_vote(sides)
    assert choice["cosine"] is None and choice["inner_switched"] == 0
    test = _side(vectors, cluster, winner, np.flatnonzero(member != 3), np.flatnonzero(member == 3), rng)
    pick, near = nb.apply_vote(test["nbr"], test["wins"], test["count"], test["prior"], test["fixed"], choice)
    assert (pick == test["fixed"]).all() and not near.any()


def test_vote_estimates_weigh_by_closeness_and_shrink_to_the_prior():
    train = nb.unit_rows(np.array([[1.0, 0.0], [1.0, 0.02], [0.0, 1.0]]))
    query = nb.unit_rows(np.array([[1.0, 0.01], [-1.0, 0.0]]))
    nbr = nb.near_neighbours(query, train, 0.9)
    assert nbr.indptr.tolist() == [0, 2, 2] and sorted(nbr.index.tolist()) == [0, 1]
    wins = np.array([[4.0, 0.0], [0.0, 4.0], [4.0, 4.0]])
    count = np.full((3, 2), 4.0)
    prior = np.array([0.5, 0.25])
    est, has = nb.vote_estimates(nbr, wins, count, prior, 0.9, alpha=2.0)
    assert has.tolist() == [True, False]
    assert est[1].tolist() == prior.tolist()  # no neighbour: the prior
    # both neighbours at cosine ~1: weights ~1.1 each, so est ~ (4.4 + 2 * prior) / (8.8 + 2)
    assert est[0] == pytest.approx((4.4 + 2 * prior) / 10.8, abs=1e-3)
    # a neighbour at the threshold weighs FLOOR, one at cosine 1 weighs 1 + FLOOR
    nbr2 = nb.Neighbours(np.array([0, 2]), np.array([0, 1]), np.array([1.0, 0.9], np.float32))
    est2, _ = nb.vote_estimates(nbr2, wins, count, prior, 0.9, alpha=0.0)
    w0, w1 = 1 + nb.FLOOR, nb.FLOOR
    assert est2[0, 0] == pytest.approx(4 * w0 / (4 * w0 + 4 * w1), rel=1e-5)


def test_neighbours_take_keeps_the_rows_asked_for():
    nbr = nb.Neighbours(np.array([0, 2, 2, 3]), np.array([5, 6, 7]), np.array([0.9, 0.95, 0.99], np.float32))
    sub = nbr.take(np.array([True, False, True]))
    assert sub.indptr.tolist() == [0, 2, 3] and sub.index.tolist() == [5, 6, 7]
    assert nbr.take(np.zeros(3, bool)).n == 0


# -- through oirl.rerank: a log with planted near-duplicates against the same log without them ---------------

class PlantedEmbedder:
    """Stands in for the embedder: each question's vector is its cluster's centre plus a little noise
    (``spread`` 0.01: near-duplicates) or an unrelated random vector; prompts get random vectors."""

    def __init__(self, texts: list[str], cluster: dict, spread: float, seed: int = 0):
        rng = np.random.default_rng(seed)
        centres = nb.unit_rows(rng.normal(size=(max(cluster.values()) + 1, D)))
        self.vec = {}
        for t in texts:
            base = centres[cluster[t]] if spread < 1 else rng.normal(size=D)
            self.vec[t] = base + min(spread, 1.0) * rng.normal(size=D) * (spread < 1)
        self.encoder = type("Enc", (), {"kind": "planted"})()

    def embed(self, texts, add=True):
        rng = np.random.default_rng(len(texts))
        return np.asarray([self.vec[t] if t in self.vec else rng.normal(size=D) for t in texts], np.float32)


@pytest.fixture(scope="module")
def planted(mawps_small):
    """mawps_small's 300 questions in 100 clusters of 3, with outcomes redrawn: the best fixed prompt is right
    60% of the time, the cluster's winning prompt 90%, the others 30%."""
    queries = mawps_small.column("query").to_pylist()
    uq = sorted(set(queries))
    cluster = {q: i // 3 for i, q in enumerate(uq)}
    pid = np.asarray(mawps_small.column("prompt_id").to_pylist(), dtype=object)
    train_ids = sorted({p for p, s in zip(pid, mawps_small.column("split").to_pylist()) if s == "train"})
    rng = np.random.default_rng(0)
    winner = rng.choice(train_ids, size=len(uq) // 3 + 1)
    c = np.array([cluster[q] for q in queries])
    p = np.where(pid == winner[c], 0.9, np.where(pid == train_ids[0], 0.6, 0.3))
    i = mawps_small.schema.get_field_index("correct")
    table = mawps_small.set_column(i, mawps_small.schema.field(i), pa.array(rng.random(len(pid)) < p, pa.bool_()))
    return table, uq, cluster


@pytest.mark.parametrize("spread, switches", [(0.01, True), (2.0, False)])
def test_rerank_switches_only_with_near_duplicates(planted, spread, switches):
    import oirl_fast as oirl

    table, uq, cluster = planted
    res = oirl.rerank(table, folds=3, inner_folds=1, candidates=["knn"], embedder=PlantedEmbedder(uq, cluster, spread),
                      progress=False)
    fig = res.report["datasets"]["mawps"]["n_train_prompts"]
    acc, ci = fig["accuracy"], fig["diff_to_best_single_ci95"]["rerank"]
    if switches:
        assert fig["switched_share"] > 0.3 and fig["near_share"] > 0.9
        assert ci[0] > 0.05  # the planted gain, well clear of 0
        assert all(v["cosine"] is not None for v in fig["votes"])
    else:
        assert fig["switched_share"] == 0 and fig["near_share"] == 0
        assert acc["rerank"] == acc["best_single"]
        assert all(v["cosine"] is None for v in fig["votes"])
    recs = res.records()
    assert len(recs) == 300
    assert np.mean([r["pick"]["switched"] for r in recs]) == pytest.approx(
        np.mean(res.seeds[0].sets["train"].switched))


def test_a_gain_within_noise_does_not_switch():
    """Every inner question's near-duplicate says prompt 1 wins; on the questions themselves it wins 51 times and
    loses 49: a mean gain of +0.02 with a standard error of about 0.1. Chosen by mean gain alone it switches;
    the MIN_Z screen on the chosen triple keeps the fixed prompt."""
    n = 100
    nbr = nb.Neighbours(np.arange(n + 1), np.zeros(n, np.int64), np.full(n, 0.999, np.float32))
    outcome = np.zeros((n, 2))
    outcome[:51, 1] = 1.0
    outcome[51:, 0] = 1.0
    side = {"nbr": nbr, "wins": np.array([[0.0, 4.0]]), "count": np.array([[4.0, 4.0]]),
            "prior": np.array([0.5, 0.4]), "fixed": np.zeros(n, np.int64), "outcome": outcome}
    loose = nb.choose_vote([side], min_z=0.0)
    assert loose["cosine"] is not None and loose["inner_gain"] == pytest.approx(0.02)
    screened = nb.choose_vote([side])
    assert screened["cosine"] is None and screened["best_inner_gain"] == pytest.approx(0.02)
    assert 0.08 < screened["best_inner_se"] < 0.12


@pytest.mark.parametrize("block", [1, 7, 1024])
def test_near_neighbours_lists_every_pair_above_the_threshold_in_order(block):
    """Against brute force: rows with no neighbour, rows with several, blocks that split them; template cosines
    computed only for the pairs found equal the full projection's."""
    rng = np.random.default_rng(3)
    train = nb.unit_rows(rng.normal(size=(40, 12)))
    near = nb.unit_rows(train[rng.integers(0, 40, 25)] + rng.normal(0, 0.1, (25, 12)))
    far = nb.unit_rows(rng.normal(size=(25, 12)))
    query = np.concatenate([near, far])[rng.permutation(50)]
    basis = nb.unit_rows(rng.normal(size=(3, 12)))
    nbr = nb.near_neighbours(query, train, 0.9, block=block, basis=basis)
    sim = query @ train.T
    r, c = np.nonzero(sim >= 0.9)
    assert 0 < len(np.unique(r)) < len(query)  # some rows have neighbours, some none
    assert nbr.rows().tolist() == r.tolist() and nbr.index.tolist() == c.tolist()
    assert np.allclose(nbr.cosine, sim[r, c])
    expect = np.einsum("ij,ij->i", nb.project(query, basis)[r], nb.project(train, basis)[c])
    assert np.allclose(nbr.template, expect, atol=1e-6)
    assert nb.near_neighbours(query, train[:0], 0.9, block=block).indptr.tolist() == [0] * 51
