"""Audits (T34 canaries, T43 membership inference and the one-run ε lower bound, T44 inversion).

Statistical tests are seeded; where a test compares a random quantity with a threshold, the
comment gives the quantity's null distribution and the margin.
"""

import copy
import functools
import itertools
import math
import re

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from privsem.audits import canaries as cn
from privsem.audits import metrics as mt
from privsem.audits import one_run as orun
from privsem.rng import SecureRandomness, SeededRandomness

# ---------------------------------------------------------------------------------------------
# metrics


@settings(deadline=5_000, max_examples=60)
@given(mem=st.lists(st.integers(0, 6), min_size=1, max_size=40),
       non=st.lists(st.integers(0, 6), min_size=1, max_size=40))
def test_T43_auc_is_mann_whitney_u_with_ties_as_half(mem, non):
    # small integer scores: many ties between members and non-members
    u = stats.mannwhitneyu(mem, non, alternative="two-sided").statistic  # U of the members
    expected = u / (len(mem) * len(non))
    assert mt.auc(mem, non) == pytest.approx(expected, abs=1e-12)
    assert mt.mann_whitney_auc(mem, non) == pytest.approx(expected, abs=1e-12)
    # and the definition P[s_m > s_n] + ½ P[s_m = s_n], by brute force
    a, b = np.asarray(mem)[:, None], np.asarray(non)[None, :]
    assert mt.auc(mem, non) == pytest.approx(float(np.mean((a > b) + 0.5 * (a == b))), abs=1e-12)


def test_T43_auc_and_roc_edge_cases():
    assert mt.auc([2, 3], [0, 1]) == 1.0
    assert mt.auc([0, 1], [2, 3]) == 0.0
    assert mt.auc([1, 1, 1], [1, 1]) == 0.5
    roc = mt.roc_curve([0.9, 0.4, 0.4], [0.4, 0.1])
    assert (roc.fpr[0], roc.tpr[0], roc.fpr[-1], roc.tpr[-1]) == (0.0, 0.0, 1.0, 1.0)
    assert np.all(np.diff(roc.fpr) >= 0) and np.all(np.diff(roc.tpr) >= 0)
    assert roc.thresholds[0] == math.inf and np.all(np.diff(roc.thresholds) < 0)
    with pytest.raises(ValueError, match="finite"):
        mt.auc([1.0, float("nan")], [0.0])
    with pytest.raises(ValueError, match="no scores"):
        mt.auc([], [0.0])


@settings(deadline=5_000, max_examples=40)
@given(seed=st.integers(0, 2**32 - 1), n1=st.integers(1, 60), n0=st.integers(1, 300),
       target=st.sampled_from([0.001, 0.01, 0.05, 0.2]))
def test_T43_tpr_at_fpr_is_max_tpr_over_thresholds_with_fpr_at_most_target(seed, n1, n0,
                                                                              target):
    g = np.random.default_rng(seed)
    mem, non = g.integers(0, 20, n1) + 0.5, g.integers(0, 20, n0).astype(float)
    mem[: n1 // 3] = non[0]  # some exact ties across the classes
    res = mt.tpr_at_fpr(mem, non, target)
    # brute force over every threshold, "member iff score >= t"
    best = 0.0
    for t in np.concatenate([mem, non, [np.inf]]):
        if np.mean(non >= t) <= target + 1e-12:
            best = max(best, float(np.mean(mem >= t)))
    assert res.tpr == pytest.approx(best)
    assert res.achieved_fpr <= target + 1e-12
    assert res.max_false_positives == math.floor(target * n0 + 1e-9)
    assert res.resolved == (res.max_false_positives >= 1)


def test_T43_tpr_at_low_fpr_says_when_it_is_not_resolved():
    g = np.random.default_rng(0)
    mem, non = g.normal(1.0, 1.0, 500), g.normal(0.0, 1.0, 500)
    at_01 = mt.tpr_at_fpr(mem, non, 0.001)
    assert not at_01.resolved and at_01.false_positives == 0 and at_01.max_false_positives == 0
    assert "not resolved" in at_01.note and "1000" in at_01.note
    at_1 = mt.tpr_at_fpr(mem, non, 0.01)
    assert at_1.resolved and at_1.max_false_positives == 5 and at_1.false_positives <= 5
    big = mt.tpr_at_fpr(mem, g.normal(0.0, 1.0, 1000), 0.001)
    assert big.resolved and big.max_false_positives == 1
    summary = mt.summarize_attack("loss", mem, non)
    assert [t.target_fpr for t in summary.tpr_at] == [0.01, 0.001]
    assert summary.to_json()["tpr_at_fpr"][1]["resolved"] is False


def test_T43_roc_plot_is_written(tmp_path):
    pytest.importorskip("matplotlib")
    g = np.random.default_rng(1)
    curves = {"loss": mt.roc_curve(g.normal(1, 1, 300), g.normal(0, 1, 300)),
              "chance": mt.roc_curve(g.normal(0, 1, 300), g.normal(0, 1, 300))}
    out = mt.plot_roc_loglog(curves, tmp_path / "roc.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ---------------------------------------------------------------------------------------------
# one-run audit (Steinke, Nasr, Jagielski 2023)


def test_T43_one_run_reproduces_the_papers_printed_values():
    # arXiv:2305.08846, Appendix D (p. 46): get_eps_audit(1000, 100, 75, 1e-4, 0.05) = 0.673;
    # §7 (Fig. 11's best point): m = 100000, r = 1510, v = 1439, δ = 1e-5, 95 % -> 2.675.
    # (Values as transcribed in a public port; 2.6759 printed truncated as 2.675.)
    assert orun.epsilon_lower_bound(m=1000, r=100, v=75, delta=1e-4, beta=0.05) == \
        pytest.approx(0.673, abs=5e-4)
    assert orun.epsilon_lower_bound(m=100_000, r=1510, v=1439, delta=1e-5, beta=0.05) == \
        pytest.approx(2.675, abs=1e-3)


@settings(deadline=5_000, max_examples=40)
@given(r=st.integers(1, 2000), beta=st.floats(1e-4, 0.5))
def test_T43_one_run_perfect_guessing_has_the_closed_form(r, beta):
    # δ = 0, v = r: p-value q^r < β  <=>  ε > logit(β^(1/r))
    eps = orun.epsilon_lower_bound(m=2 * r, r=r, v=r, delta=0.0, beta=beta)
    assert eps == pytest.approx(orun.perfect_guessing_bound(r=r, beta=beta), abs=1e-7)
    assert eps <= orun.perfect_guessing_bound(r=r, beta=beta) + 1e-12  # never rounds up


@settings(deadline=5_000, max_examples=60)
@given(r=st.integers(0, 3000), frac=st.floats(0.0, 0.5), extra=st.integers(0, 5000),
       delta=st.sampled_from([0.0, 1e-6, 1e-3]), beta=st.floats(0.01, 0.2))
def test_T43_one_run_chance_guessing_gives_zero(r, frac, extra, delta, beta):
    v = math.floor(frac * r)  # at most half right: never evidence against ε = 0
    assert orun.epsilon_lower_bound(m=r + extra + 1, r=r, v=v, delta=delta, beta=beta) == 0.0


@settings(deadline=20_000, max_examples=15)
@given(r=st.integers(1, 60), extra=st.integers(0, 500), delta=st.sampled_from([0.0, 1e-5, 1e-3]))
def test_T43_one_run_bound_increases_with_correct_guesses(r, extra, delta):
    m = r + extra
    bounds = [orun.epsilon_lower_bound(m=m, r=r, v=v, delta=delta, beta=0.05)
              for v in range(r + 1)]
    assert all(b1 <= b2 + 1e-9 for b1, b2 in itertools.pairwise(bounds))
    # δ > 0 only weakens the evidence
    with_delta = orun.epsilon_lower_bound(m=m, r=r, v=r, delta=1e-3, beta=0.05)
    assert with_delta <= bounds[-1] + 1e-9


def _randomised_response(g, m, eps):
    """ε-DP in each canary's inclusion bit: output the bit, flipped with prob. 1/(1+e^ε)."""
    included = g.random(m) < 0.5
    flip = g.random(m) < 1.0 / (1.0 + math.exp(eps))
    return included, (included ^ flip).astype(float)  # scores: the noisy bit


@pytest.mark.parametrize("eps", [1.0, 2.0])
def test_T43_one_run_never_contradicts_an_exactly_eps_dp_mechanism(eps):
    m, k, beta = 1000, 200, 0.05
    # Exact: with k+ = k- = 200 on randomised-response scores every guess follows the noisy bit,
    # so W ~ Binomial(400, e^ε/(1+e^ε)) and P[bound > ε] = P[W >= v0], v0 the first v whose
    # p-value at ε is below β. The theorem says this is at most β.
    r, q = 2 * k, 1.0 / (1.0 + math.exp(-eps))
    v0 = next(v for v in range(r + 1)
              if orun.p_value(m=m, r=r, v=v, epsilon=eps, delta=0.0) < beta)
    exact_failure = float(stats.binom.sf(v0 - 1, r, q))
    assert exact_failure <= beta
    # Simulated, 200 trials (numpy Generator, seeded): failures ~ Binomial(200, exact_failure),
    # exact_failure ≈ 0.04 here, mean ≈ 8. Asking for <= 10 failures (95 %) would fail by chance
    # about a quarter of the time even for a correct bound; the 99.9 % quantile of
    # Binomial(200, β) = 21 is the honest limit, and a wrong bound (say ε/2) fails it by far.
    g = np.random.default_rng(20230508)
    failures = wrong = 0
    for _ in range(200):
        included, scores = _randomised_response(g, m, eps)
        res = orun.one_run_audit(scores, included, k_plus=k, k_minus=k, delta=0.0,
                                 confidence=1 - beta)
        failures += res.epsilon_lower_bound > eps
        wrong += res.epsilon_lower_bound > eps / 2
    assert failures <= stats.binom.ppf(0.999, 200, beta)
    assert wrong > 100  # the bound is not vacuous: it usually exceeds ε/2
    print(f"eps={eps}: exact P[bound > eps] = {exact_failure:.4f}; simulated {failures}/200")


def test_T43_one_run_grid_pays_for_its_choices():
    g = np.random.default_rng(7)
    included, scores = _randomised_response(g, 2000, 2.0)
    scores = scores + g.normal(0, 0.3, scores.size)  # a weaker, continuous score
    res = orun.one_run_audit_grid(scores, included, delta=1e-5, confidence=0.95)
    grid = orun.default_grid(2000)
    assert res.grid_size == len(grid) and res.beta_per_test == pytest.approx(0.05 / len(grid))
    each = [orun.epsilon_lower_bound(
        m=2000, delta=1e-5, beta=0.05 / len(grid),
        **dict(zip(("r", "v"), orun.guess_counts(scores, included, k_plus=kp, k_minus=km),
                   strict=True))) for kp, km in grid]
    assert res.epsilon_lower_bound == max(each)
    assert 0 < res.epsilon_lower_bound <= 2.0
    assert not res.contradicts(2.0) and res.contradicts(res.epsilon_lower_bound / 2)
    assert (res.k_plus, res.k_minus) == grid[int(np.argmax(each))]
    assert res.to_json()["grid_size"] == len(grid)


def test_T43_one_run_guesses_never_look_at_the_secret():
    scores = np.array([3.0, 1.0, 1.0, 1.0, 0.0])
    # ties at 1.0 are broken by index, whatever `included` says
    a = orun.guess_counts(scores, np.array([1, 1, 0, 0, 0], bool), k_plus=2, k_minus=2)
    b = orun.guess_counts(scores, np.array([1, 0, 1, 0, 0], bool), k_plus=2, k_minus=2)
    assert a == (4, 4) and b == (4, 3)  # plus = {0, 1}, minus = {3, 4}
    with pytest.raises(ValueError, match="boolean"):
        orun.guess_counts(scores, np.array([1, 0, 1, 0, 0]), k_plus=1, k_minus=1)
    with pytest.raises(ValueError, match="k_plus"):
        orun.guess_counts(scores, np.zeros(5, bool), k_plus=3, k_minus=3)
    with pytest.raises(ValueError, match="delta"):
        orun.epsilon_lower_bound(m=10, r=5, v=5, delta=1.5, beta=0.05)


# ---------------------------------------------------------------------------------------------
# canaries (T34)


def test_T34_canaries_are_random_from_their_space_and_the_split_is_secret():
    fmt = cn.CanaryFormat.digits(6)
    cs, included = cn.plant_canaries(fmt, 50, SeededRandomness(1, "canaries"))
    assert len({c.secret for c in cs}) == 50
    assert all(re.fullmatch(r"My account PIN is \d{6}\.", c.text) for c in cs)
    assert all(fmt.secret_of(c.secret_index) == c.secret for c in cs)
    assert included.dtype == np.bool_ and included.shape == (50,)
    again, inc2 = cn.plant_canaries(fmt, 50, SeededRandomness(1, "canaries"))
    assert [c.secret for c in again] == [c.secret for c in cs] and np.array_equal(inc2, included)
    secure, _ = cn.plant_canaries(fmt, 50, SecureRandomness())
    assert [c.secret for c in secure] != [c.secret for c in cs]
    words = cn.CanaryFormat.words(["alpha", "bravo", "charlie", "delta", "echo"], length=3)
    ws = cn.make_canaries(words, 10, SeededRandomness(2))
    assert all(len(c.secret.split(" ")) == 3 for c in ws) and words.space_size == 125
    with pytest.raises(ValueError, match="exactly once"):
        cn.CanaryFormat(template="no slot", alphabet=("a",), length=1)


def test_T34_split_and_integers_are_uniform():
    rng = SeededRandomness(3)
    split = cn.random_split(20_000, rng)
    # Binomial(20000, ½): std 71; 5 std = 354
    assert abs(int(split.sum()) - 10_000) < 354
    x = cn.uniform_integers(rng, 60_000, 6)
    counts = np.bincount(x, minlength=6)
    assert x.min() == 0 and x.max() == 5
    assert stats.chisquare(counts).pvalue > 1e-4
    # secret_of is a bijection of [0, |R|) onto R
    fmt = cn.CanaryFormat(template="{secret}", alphabet=("a", "b", "c"), length=4,
                          separator="-")
    assert len({fmt.secret_of(i) for i in range(fmt.space_size)}) == 81


def test_T34_exposure_definition_and_chance_level():
    fmt = cn.CanaryFormat.digits(3, "code {secret}")
    cs = cn.make_canaries(fmt, 40, SeededRandomness(4))

    def ranked_first(target):  # the canary has the lowest loss of all
        return lambda exs: np.array([0.0 if e.response == target else 1.0 + (hash(e.response)
                                     % 97) for e in exs])

    top = cn.secret_sharer_exposure(cs[0], fmt, ranked_first(cs[0].text), SeededRandomness(5))
    assert top.method == "enumerated" and top.compared == 999
    assert top.exposure == pytest.approx(math.log2(1000)) and top.rank == 1
    # a loss that ignores the canary: its rank is uniform, mean exposure ≈ chance (1.44 bits).
    # Exposure = -log2(uniform rank / |R|) is close to exponential with mean and std 1.44:
    # the mean of 40 has std 0.23; 0.8 is 3.5 std.
    g = np.random.default_rng(6)
    table = g.random(1000)

    def random_loss(exs):
        return np.array([table[int(e.response[-3:])] for e in exs])

    exps = [cn.secret_sharer_exposure(c, fmt, random_loss, SeededRandomness(7)).exposure
            for c in cs]
    assert abs(np.mean(exps) - cn.chance_exposure(1000)) < 0.8
    # chance_exposure is the mean over uniform ranks
    assert cn.chance_exposure(1000) == pytest.approx(
        np.mean([math.log2(1000) - math.log2(k) for k in range(1, 1001)]))
    # sampling when R is too large to enumerate: capped at log2(n + 1), flagged as censored
    big = cn.CanaryFormat.digits(9)
    c = cn.make_canaries(big, 1, SeededRandomness(8))[0]
    est = cn.secret_sharer_exposure(c, big, ranked_first(c.text), SeededRandomness(9),
                                    n_samples=255)
    assert est.method == "sampled" and est.censored and est.exposure == pytest.approx(8.0)


def test_T34_verbatim_check_finds_canaries_and_their_secrets():
    fmt = cn.CanaryFormat.digits(6)
    cs = cn.make_canaries(fmt, 3, SeededRandomness(10))
    texts = ["A normal answer.", f"Leak:  {cs[1].text.replace(' ', '   ')} yes",
             f"the number {cs[2].secret} appears", "Another answer about 12 planets."]
    rep = cn.find_verbatim(cs, texts)
    assert not rep.clean
    assert {(h.canary_index, h.text_index, h.matched) for h in rep.hits} == {
        (1, 1, "canary"), (2, 2, "secret")}
    assert cn.find_verbatim(cs, [texts[0], texts[3]]).clean
    assert cn.find_verbatim(cs, texts, check_secret=False).to_json()["hits"] == [
        {"canary_index": 1, "text_index": 1, "matched": "canary"}]


# ---------------------------------------------------------------------------------------------
# membership inference on a tiny model (T43)


@pytest.fixture
def one_thread():
    # The tiny model runs ~50x faster on one thread on a shared 2-core machine.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_T43_mia_on_an_overfit_tiny_model(one_thread):
    from privsem.audits.mia import example_losses, mia_scores
    from privsem.models.loading import load_model
    from privsem.models.prompting import resolve_format
    from privsem.models.training import encode_examples, train_plain

    fmt = cn.CanaryFormat.digits(6, "PIN {secret}", prompt="PIN?")
    cs, inc = cn.plant_canaries(fmt, 48, SeededRandomness(11, "mia"))
    examples = [c.example for c in cs]
    lm = load_model("tiny-llama", seed=5)
    base = copy.deepcopy(lm.model)

    before = mia_scores(lm.model, lm.tokenizer, examples, reference_model=base)
    # Before training the split is independent of the model: AUC ~ null with mean ½ and std
    # sqrt((n1 + n0 + 1) / (12 n1 n0)) ≈ 0.085 for 48 canaries; 0.3 is 3.5 std.
    auc_before = mt.auc(before.loss[inc], before.loss[~inc])
    assert abs(auc_before - 0.5) < 0.3
    assert mt.auc(before.reference[inc], before.reference[~inc]) == 0.5  # all ties: 0 - 0
    again = example_losses(lm.model, lm.tokenizer, examples, batch_size=7)
    np.testing.assert_allclose(again, before.target_loss, rtol=1e-5, atol=1e-6)

    members = [e for e, i in zip(examples, inc, strict=True) if i]
    data = encode_examples(lm.tokenizer, resolve_format(lm.tokenizer, "auto"), members, 64)
    lm.model.train()
    train_plain(lm.model, data, epochs=30, batch_size=8, learning_rate=3e-3,
                generator=torch.Generator().manual_seed(0))  # ~90 steps, a few seconds
    assert not lm.model.training
    after = mia_scores(lm.model, lm.tokenizer, examples, reference_model=base)
    aucs = {k: mt.auc(v[inc], v[~inc]) for k, v in after.attacks().items()}
    print(f"AUC before {auc_before:.3f}, after {aucs}")
    # observed 1.0 for all three; 0.9 leaves a wide margin
    assert min(aucs.values()) >= 0.9
    one_run = orun.one_run_audit_grid(after.loss, inc, delta=0.0)
    print("one-run bound on the non-private fine-tune:", one_run.to_json())
    assert one_run.epsilon_lower_bound > 0.5

    # Secret Sharer exposure, sampled (|R| = 10^6): members near the cap log2(201) ≈ 7.65,
    # non-members near chance (exponential-like, mean and std 1.44 bits; mean of 6 has std 0.6)
    loss_fn = functools.partial(example_losses, lm.model, lm.tokenizer, batch_size=64)
    mem_idx = np.flatnonzero(inc)[:6]
    non_idx = np.flatnonzero(~inc)[:6]
    rng = SeededRandomness(12, "exposure")
    exp_mem = [cn.secret_sharer_exposure(cs[i], fmt, loss_fn, rng, n_samples=200).exposure
               for i in mem_idx]
    exp_non = [cn.secret_sharer_exposure(cs[i], fmt, loss_fn, rng, n_samples=200).exposure
               for i in non_idx]
    print(f"exposure members {np.round(exp_mem, 2)}, non-members {np.round(exp_non, 2)}")
    assert np.mean(exp_mem) > 6.0
    assert np.mean(exp_non) < cn.chance_exposure(10**6) + 2.5


def test_T43_mia_refuses_a_reply_cut_off_by_max_length(one_thread):
    from privsem.audits.mia import example_losses
    from privsem.models.loading import load_model

    lm = load_model("tiny-llama", seed=5)
    ex = cn.CanaryFormat.digits(6).example("123456")
    with pytest.raises(ValueError, match="max_length"):
        example_losses(lm.model, lm.tokenizer, [ex], max_length=8)


# ---------------------------------------------------------------------------------------------
# inversion (T44)

_NAMES = ("alice", "bruno", "chen", "dmitri", "elena", "farah", "gustav", "hana", "igor",
          "jamal", "kenji", "lucia", "marta", "nikos", "olga", "pedro", "quinn", "rosa", "sven",
          "tariq")
_COLOURS = ("red", "blue", "green", "yellow", "purple", "orange", "black", "white", "silver",
            "golden")
_ANIMALS = ("cat", "dog", "horse", "parrot", "rabbit", "turtle", "goat", "owl", "fox", "lizard",
            "snake", "hamster")
_PLACES = ("kitchen", "garden", "attic", "barn", "library", "harbour", "forest", "cellar",
           "school", "market")
_VERBS = ("keeps", "feeds", "paints", "hides", "finds", "sells")
_TEMPLATES = ("{n} {v} a {c} {a} in the {p}.", "In the {p}, {n} {v} the {c} {a}.",
              "The {c} {a} that {n} {v} lives near the {p}.")


@pytest.fixture(scope="module")
def corpus(embedder):
    """Distinct synthetic sentences (from 432,000 combinations) and their MiniLM embeddings."""
    g = np.random.default_rng(0)
    texts: list[str] = []
    while len(texts) < 800:
        t = _TEMPLATES[g.integers(3)].format(
            n=_NAMES[g.integers(20)].capitalize(), v=_VERBS[g.integers(6)],
            c=_COLOURS[g.integers(10)], a=_ANIMALS[g.integers(12)], p=_PLACES[g.integers(10)])
        if t not in texts:
            texts.append(t)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        emb = embedder.encode(texts)
    finally:
        torch.set_num_threads(before)
    return texts, emb.astype(np.float64)


def test_T44_token_f1():
    from privsem.audits.inversion import token_f1, word_tokens

    assert word_tokens("The Cat, the cat!") == ["the", "cat", "the", "cat"]
    assert token_f1(["the", "cat"], "The cat sat.") == pytest.approx(0.8)
    assert token_f1([], "x") == 0.0 and token_f1(["dog"], "The cat.") == 0.0


def test_T44_nearest_neighbour_inversion_on_synthetic_vectors():
    from privsem.audits.inversion import nn_inversion_curve

    g = np.random.default_rng(1)
    pool = g.normal(size=(200, 384))
    pool /= np.linalg.norm(pool, axis=1, keepdims=True)
    texts = [f"text number {i}" for i in range(200)]
    res = nn_inversion_curve(pool[:50], texts[:50], pool, texts, [0.0, 10.0],
                             SeededRandomness(2))
    assert res[0].top1_accuracy == 1.0 and res[0].mean_token_f1 == 1.0
    # σ = 10: the true row's margin (about 1) is far inside the noise on 200 inner products
    assert res[1].top1_accuracy <= 0.1
    with pytest.raises(ValueError, match="not in the pool"):
        nn_inversion_curve(pool[:1], ["absent"], pool, texts, [0.0], SeededRandomness(2))


def test_T44_nearest_neighbour_inversion_of_real_embeddings(corpus):
    from privsem.audits.inversion import nn_inversion_curve

    texts, emb = corpus
    true_t, true_e = texts[600:700], emb[600:700]  # 100 prompts' answers
    pool_t, pool_e = texts[600:], emb[600:]  # the answers plus 100 distractors
    curve = nn_inversion_curve(true_e, true_t, pool_e, pool_t, [0.0, 0.2, 0.5, 2.5],
                               SeededRandomness(13, "nn"))
    print([(r.noise_std, r.top1_accuracy, round(r.mean_token_f1, 3)) for r in curve],
          "chance", curve[0].chance_top1, round(curve[0].chance_token_f1, 3))
    assert curve[0].top1_accuracy >= 0.9
    # the demo's consensus noise, std 2.5 per entry: chance is 1/200; P[top-1 >= 6/100] is
    # negligible unless the noise leaves a real signal
    demo = curve[-1]
    assert demo.top1_accuracy <= 0.06
    assert demo.mean_token_f1 <= demo.chance_token_f1 + 0.1


def test_T44_trained_inverter_beats_chance_only_without_noise(corpus):
    from privsem.audits.inversion import InverterConfig, inverter_curve

    texts, emb = corpus
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        res = inverter_curve(emb[:600], texts[:600], emb[600:700], texts[600:700], [0.0, 2.5],
                             SeededRandomness(14, "inverter"),
                             InverterConfig(hidden=128, epochs=30))
    finally:
        torch.set_num_threads(before)
    print([r.to_json() for r in res])
    clean, demo = res
    assert clean.chance_token_f1 == demo.chance_token_f1
    assert clean.mean_token_f1 >= clean.chance_token_f1 + 0.25
    assert demo.mean_token_f1 <= demo.chance_token_f1 + 0.05
