"""Template variants in the near-duplicate vote: questions that share their text up to the numbers are found
with the directions along which such variants differ projected out (learnt from the training side's texts),
and they outvote questions that are merely close."""
import numpy as np
import pytest

from oirl_fast.reranking import neighbours as nb

D = 128


def test_template_key_masks_numbers_and_normalizes():
    a = nb.template_key("Ted has 15.0 candy bars . He puts them in 5.0 bags .")
    assert a == nb.template_key("ted has 3 candy bars. he puts them in 12 bags.")
    assert a == "ted has # candy bars. he puts them in # bags."
    assert a != nb.template_key("Ted has 15 candy bars. He eats 5 of them.")


def _templated(n_templates: int, variants: int, rng, number_dirs: int = 4, number_scale: float = 0.2):
    """Unit vectors (n_templates * variants, D): each template's variants differ only along ``number_dirs``
    shared directions (their numbers), by enough to bring their plain cosine down."""
    numbers = np.linalg.qr(rng.normal(size=(D, number_dirs)))[0].T  # orthonormal (number_dirs, D)
    centres = rng.normal(size=(n_templates, D))
    centres -= (centres @ numbers.T) @ numbers  # templates live off the number directions
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    x = np.repeat(centres, variants, axis=0) + number_scale * rng.normal(size=(n_templates * variants, number_dirs)) @ numbers
    keys = np.repeat([f"template {t}" for t in range(n_templates)], variants)
    return nb.unit_rows(x), keys, numbers


def test_template_basis_finds_the_number_directions():
    rng = np.random.default_rng(0)
    x, keys, numbers = _templated(40, 3, rng)
    basis = nb.template_basis(x, keys)
    assert basis.dtype == np.float32 and basis.shape[1] == D and len(basis) <= nb.TEMPLATE_RANK
    # the learnt span holds the number directions: projecting them onto it leaves (almost) nothing out
    residual = numbers - (numbers @ basis.T.astype(np.float64)) @ basis
    assert np.linalg.norm(residual, axis=1).max() < 0.05
    nbr = nb.near_neighbours(x, x, 0.5, basis=basis)
    same = keys[nbr.rows()] == keys[nbr.index]
    assert nbr.template[same].min() > nb.TEMPLATE_COSINE  # variants of one template: cos' ~ 1
    assert np.percentile(nbr.cosine[same & (nbr.rows() != nbr.index)], 50) < 0.97  # ... though not by plain cosine
    # the order of the rows does not change the projection
    perm = rng.permutation(len(x))
    b2 = nb.template_basis(x[perm], keys[perm])
    assert np.allclose(nb.project(x, b2), nb.project(x, basis), atol=1e-4)


def test_no_template_pairs_no_basis():
    rng = np.random.default_rng(1)
    x = nb.unit_rows(rng.normal(size=(200, D)))
    assert nb.template_basis(x, [f"q{i}" for i in range(200)]) is None
    few = [f"q{i // 2}" if i < 2 * (nb.TEMPLATE_MIN_PAIRS - 1) else f"r{i}" for i in range(200)]
    assert nb.template_basis(x, few) is None  # one pair short of TEMPLATE_MIN_PAIRS
    assert nb.near_neighbours(x, x, 0.9).template is None
    assert nb.project(x, None) is x


def _outcomes(winner_of: np.ndarray, rng, answers: int = 20):
    """(wins, count) float (n, 3): prompt 0 right 60% of the time; the row's winner (1 or 2) 90%, the other 30%."""
    n = len(winner_of)
    p = np.full((n, 3), 0.3)
    p[:, 0] = 0.6
    p[np.arange(n), winner_of] = 0.9
    return rng.binomial(answers, p).astype(float), np.full((n, 3), float(answers))


@pytest.mark.parametrize("seed", range(3))
def test_template_variants_outvote_closer_other_questions(seed):
    """Each test question has two template variants on the training side (plain cosine ~0.96, its winner) and
    two decoys: other questions closer by plain cosine (~0.99) whose winner is the other prompt. With the
    learnt directions the variants decide; without them the decoys win the vote."""
    rng = np.random.default_rng(seed)
    n, variants = 120, 3
    x, keys, numbers = _templated(n, variants, rng, number_scale=0.1)
    member = np.tile(np.arange(variants), n)
    template = np.repeat(np.arange(n), variants)
    winner = rng.choice([1, 2], size=n)
    test = np.flatnonzero(member == 0)
    # decoys: each test question's vector nudged off the number directions (another question, same numbers)
    decoys = x[test] + 0.012 * rng.normal(size=(n, D))
    decoys = nb.unit_rows(decoys - ((decoys - x[test]) @ numbers.T) @ numbers)
    train_x = np.vstack([x[member != 0], decoys, decoys])
    train_keys = np.concatenate([keys[member != 0], [f"decoy {i}" for i in range(2 * n)]])
    train_winner = np.concatenate([winner[template[member != 0]], 3 - winner, 3 - winner])
    wins, count = _outcomes(train_winner, rng)
    prior = nb.pooled_prior(wins, count)
    fixed = np.zeros(n, np.int64)
    basis = nb.template_basis(train_x, train_keys)
    outcome = np.full((n, 3), 0.3)
    outcome[:, 0] = 0.6
    outcome[np.arange(n), winner] = 0.9
    gains = {}
    for with_basis in (True, False):
        nbr = nb.near_neighbours(x[test], train_x, min(nb.COSINES), basis=basis if with_basis else None)
        choice = {"cosine": 0.85, "alpha": 1.0, "margin": 0.0}
        pick, near = nb.apply_vote(nbr, wins, count, prior, fixed, choice)
        assert near.all()
        gains[with_basis] = float((outcome[np.arange(n), pick] - outcome[:, 0]).mean())
        if with_basis:
            assert (pick == winner).mean() > 0.9
    assert gains[True] > 0.25 and gains[True] - gains[False] > 0.2


def test_a_bad_template_basis_is_refused(tmp_path):
    from oirl_fast.errors import OirlError
    from oirl_fast.reranking.fallback import NEIGHBOURS_FILE, load_vote_arrays

    record = {"vote": {"file": NEIGHBOURS_FILE, "prompt_ids": ["a", "b"]}}
    good = {"vectors": np.ones((3, 4), np.float32), "wins": np.ones((3, 2)), "count": np.full((3, 2), 2.0)}
    np.savez(tmp_path / NEIGHBOURS_FILE, **good, template_basis=np.ones((2, 4), np.float32))
    assert load_vote_arrays(tmp_path, record, 4)["template_basis"].shape == (2, 4)
    np.savez(tmp_path / NEIGHBOURS_FILE, **good)  # a table written before templates: no basis, still read
    assert "template_basis" not in load_vote_arrays(tmp_path, record, 4)
    np.savez(tmp_path / NEIGHBOURS_FILE, **good, template_basis=np.ones((2, 5), np.float32))
    with pytest.raises(OirlError) as err:
        load_vote_arrays(tmp_path, record, 4)
    assert "template_basis" in err.value.message and NEIGHBOURS_FILE in str(err.value)


def test_coinciding_variants_learn_no_basis():
    """Variants whose vectors are identical leave no direction to remove: no basis, so cos' never stands in for
    the plain cosine."""
    x = nb.unit_rows(np.random.default_rng(2).normal(size=(40, D)))
    twins = np.repeat(x, 2, axis=0)
    assert nb.template_basis(twins, np.repeat([f"t{i}" for i in range(40)], 2)) is None
