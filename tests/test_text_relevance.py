"""Text pipelines: decision values, per-feature relevance and conservation against independent references
(the pipeline's own decision_function, leave-one-feature-out differences, eli5, Naive Bayes log-likelihoods)."""

from __future__ import annotations

import warnings

import joblib
import numpy as np
import pytest
from sklearn.calibration import CalibratedClassifierCV
from sklearn.decomposition import TruncatedSVD
from sklearn.feature_extraction.text import CountVectorizer, HashingVectorizer, TfidfTransformer, TfidfVectorizer
from sklearn.feature_selection import SelectKBest, chi2
from sklearn.linear_model import LogisticRegression, PassiveAggressiveClassifier, Perceptron, RidgeClassifier
from sklearn.linear_model import SGDClassifier
from sklearn.multiclass import OneVsRestClassifier
from sklearn.naive_bayes import ComplementNB, MultinomialNB
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import MaxAbsScaler, Normalizer, StandardScaler
from sklearn.svm import SVC, LinearSVC

from lrp_cli.errors import OptionError
from lrp_cli.text.explain import explain_text
from lrp_cli.text.pipeline import load_text_model

POS = "good great excellent fun superb lovely".split()
NEG = "bad awful boring poor dull terrible".split()
NEUTRAL = "movie plot actor the a scene film story".split()
DOC = "The good movie was bad, bad and boring but the superb actor saved a dull plot"
# Exact decompositions sum to f(x) up to float64 rounding of a few hundred terms.
EXACT = 1e-9


def corpus(seed=0, n=160):
    """Return (texts, binary labels, three-class labels) with sentiment words that decide the binary label."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    texts = []
    for label in y:
        words = list(rng.choice(NEUTRAL, 8)) + list(rng.choice(POS if label else NEG, 3)) + [rng.choice(POS + NEG)]
        rng.shuffle(words)
        texts.append(" ".join(words))
    return texts, y, np.array(["x", "y", "z"])[rng.integers(0, 3, n)]


def saved(tmp_path, pipe, labels="binary"):
    """Return the TextModel of `pipe` fitted on the corpus and saved with joblib, and the fitted pipeline."""
    texts, y, y3 = corpus()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pipe.fit(texts, y if labels == "binary" else y3)
    path = tmp_path / "model.joblib"
    joblib.dump(pipe, path)
    return load_text_model(path), pipe


def oriented(decision, target):
    """Return the decision value for class `target` from sklearn's decision_function row."""
    decision = np.asarray(decision, dtype=np.float64).ravel()
    if decision.size == 1:
        return decision[0] if target == 1 else -decision[0]
    return decision[target]


LINEAR = {
    "tfidf-bigrams-linearsvc": lambda: make_pipeline(TfidfVectorizer(ngram_range=(1, 2)), LinearSVC()),
    "hashing-sgd": lambda: make_pipeline(HashingVectorizer(n_features=2 ** 8), SGDClassifier(random_state=0)),
    "char-wb-sublinear-ridge": lambda: make_pipeline(
        TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 4), sublinear_tf=True), RidgeClassifier()),
    "char-perceptron": lambda: make_pipeline(CountVectorizer(analyzer="char", ngram_range=(1, 3)), Perceptron()),
    "binary-tfidf-kbest-maxabs": lambda: make_pipeline(
        CountVectorizer(binary=True), TfidfTransformer(), SelectKBest(chi2, k=8), MaxAbsScaler(),
        PassiveAggressiveClassifier(random_state=0)),
    "stop-words-l1-std": lambda: make_pipeline(
        CountVectorizer(stop_words="english", max_features=20), Normalizer("l1"), StandardScaler(with_mean=False),
        LogisticRegression()),
    "svd-logistic": lambda: make_pipeline(TfidfVectorizer(), TruncatedSVD(5, random_state=0), LogisticRegression()),
    "svc-linear-kernel": lambda: make_pipeline(TfidfVectorizer(min_df=2), SVC(kernel="linear")),
    "hashing-char-wb-binary-l1": lambda: make_pipeline(
        HashingVectorizer(analyzer="char_wb", ngram_range=(1, 3), n_features=2 ** 9, binary=True, norm="l1",
                          alternate_sign=False), LinearSVC()),
    "tfidf-no-idf-no-norm-sublinear": lambda: make_pipeline(
        TfidfVectorizer(use_idf=False, norm=None, sublinear_tf=True, max_df=0.5), LogisticRegression()),
    "fixed-vocabulary-max-norm": lambda: make_pipeline(
        CountVectorizer(vocabulary=POS + NEG + ["not in any text"]), Normalizer("max"), RidgeClassifier()),
}


@pytest.mark.filterwarnings("ignore::FutureWarning")  # PassiveAggressiveClassifier is deprecated in 1.8
@pytest.mark.parametrize("name", sorted(LINEAR))
@pytest.mark.parametrize("target", [0, 1])
def test_linear_pipelines_conserve_and_match_decision_function(tmp_path, name, target):
    model, pipe = saved(tmp_path, LINEAR[name]())
    ex = explain_text(model, DOC, target=target)
    assert ex.f_x == pytest.approx(oriented(pipe.decision_function([DOC]), target), abs=1e-10)
    assert ex.intercept is not None
    assert abs(ex.relevance.sum() + ex.intercept - ex.f_x) <= EXACT
    assert ex.tokens and all(DOC[t["start"]:t["end"]] == t["text"] for t in ex.tokens)


def test_relevance_equals_leave_one_feature_out_differences(tmp_path):
    """For a linear model, R_j = f(u) - f(u without feature j) at the classifier's input."""
    model, pipe = saved(tmp_path, make_pipeline(TfidfVectorizer(ngram_range=(1, 2)), LinearSVC()))
    ex = explain_text(model, DOC, target=1, top=10 ** 6)
    u = pipe[:-1].transform([DOC]).tolil()
    f = pipe[-1].decision_function(u)[0]
    for feat in ex.top_features:
        v = u.copy()
        v[0, feat["column"]] = 0.0
        assert feat["relevance"] == pytest.approx(f - pipe[-1].decision_function(v)[0], abs=1e-12)


def test_per_feature_relevance_equals_eli5(tmp_path):
    eli5 = pytest.importorskip("eli5")
    model, pipe = saved(tmp_path, make_pipeline(TfidfVectorizer(), LinearSVC()))
    ref_target = eli5.explain_prediction(pipe[-1], DOC, vec=pipe[0]).targets[0]  # eli5 explains the prediction
    ex = explain_text(model, DOC, target=str(ref_target.target), top=10 ** 6)
    ref = ref_target.feature_weights
    weights = {w.feature: w.weight for w in ref.pos + ref.neg}
    assert weights.pop("<BIAS>") == pytest.approx(ex.intercept, abs=1e-12)
    ours = {f["feature"]: f["relevance"] for f in ex.top_features if f["relevance"] != 0}
    assert ours.keys() == weights.keys()
    for key, value in weights.items():
        assert ours[key] == pytest.approx(value, abs=1e-12)


def test_multiclass_logistic_decomposes_each_class_score(tmp_path):
    model, pipe = saved(tmp_path, make_pipeline(CountVectorizer(), LogisticRegression(max_iter=500)), "three")
    scores = pipe.decision_function([DOC])[0]
    for target in range(3):
        ex = explain_text(model, DOC, target=model.classes[target])
        assert ex.f_x == pytest.approx(scores[target], abs=1e-10)
        assert abs(ex.relevance.sum() + ex.intercept - ex.f_x) <= EXACT


@pytest.mark.parametrize("labels", ["binary", "three"])
def test_one_vs_rest_linear_models_decompose_each_class(tmp_path, labels):
    model, pipe = saved(tmp_path, make_pipeline(TfidfVectorizer(), OneVsRestClassifier(LinearSVC())), labels)
    for target in range(len(model.classes)):
        ex = explain_text(model, DOC, target=target)
        assert ex.f_x == pytest.approx(oriented(pipe.decision_function([DOC]), target), abs=1e-10)
        assert abs(ex.relevance.sum() + ex.intercept - ex.f_x) <= EXACT


@pytest.mark.parametrize("nb", [MultinomialNB, ComplementNB])
@pytest.mark.parametrize("labels", ["binary", "three"])
def test_naive_bayes_is_decomposed_as_its_log_linear_score(tmp_path, nb, labels):
    model, pipe = saved(tmp_path, make_pipeline(CountVectorizer(), nb()), labels)
    jll = pipe[-1].predict_joint_log_proba(pipe[:-1].transform([DOC]))[0]
    ex = explain_text(model, DOC, target=1)
    expected = jll[1] - jll[0] if labels == "binary" else jll[1] - jll.mean()
    assert ex.f_x == pytest.approx(expected, abs=1e-9)
    assert abs(ex.relevance.sum() + ex.intercept - ex.f_x) <= EXACT


def test_calibrated_linear_model_decomposes_the_mean_base_decision(tmp_path):
    model, pipe = saved(tmp_path, make_pipeline(TfidfVectorizer(), CalibratedClassifierCV(LinearSVC(), cv=3)))
    u = pipe[:-1].transform([DOC])
    mean = np.mean([cc.estimator.decision_function(u)[0] for cc in pipe[-1].calibrated_classifiers_])
    ex = explain_text(model, DOC, target=1)
    assert ex.f_x == pytest.approx(mean, abs=1e-10)
    assert ex.prediction["probability"] == pytest.approx(pipe.predict_proba([DOC])[0].max(), abs=1e-12)


@pytest.mark.parametrize("kernel", [dict(kernel="rbf", gamma=1.0), dict(kernel="poly", degree=2, gamma=1.0)])
def test_kernel_svm_taylor_reports_its_residual(tmp_path, kernel):
    model, pipe = saved(tmp_path, make_pipeline(TfidfVectorizer(), SVC(**kernel)))
    ex = explain_text(model, DOC, target=1)
    assert ex.f_x == pytest.approx(pipe.decision_function([DOC])[0], abs=1e-10)
    assert ex.intercept is None
    assert ex.method["root"]["found"] and abs(ex.method["root"]["f_x0"]) < 1e-6
    assert ex.relevance.sum() + ex.residual == pytest.approx(ex.f_x, abs=1e-12)
    # Relevance on features absent from the text (x0 != x there) reaches the tokens too (Eq 27's even split).
    assert ex.relevance.sum() == pytest.approx(ex.features_sum, abs=1e-12)
    again = explain_text(model, DOC, target=1)  # the support vectors' side now comes from the model's cache
    assert again.f_x == ex.f_x and again.tokens == ex.tokens


def test_text_without_features_is_the_intercept_alone(tmp_path):
    model, pipe = saved(tmp_path, make_pipeline(TfidfVectorizer(), LinearSVC()))
    for text in ("", "  \n ", "qqq zzz"):
        ex = explain_text(model, text, target=1)
        assert ex.f_x == ex.intercept == pytest.approx(pipe.decision_function([text])[0], abs=1e-12)
        assert not ex.relevance.any() and ex.residual == 0.0


@pytest.mark.parametrize("kernel", [dict(kernel="rbf", gamma=1.0), dict(kernel="poly", degree=3, gamma=2.0)])
def test_sparse_column_folding_equals_the_dense_bow_decomposition(tmp_path, kernel):
    """The same kernel SVM fitted on sparse and on dense tf-idf: the folded-columns path must give the relevance
    the BoW module computes on the full dense vectors (exact kernel values either way)."""
    texts, y, _ = corpus()
    vec = TfidfVectorizer().fit(texts)
    X = vec.transform(texts)
    dense_svc = SVC(**kernel).fit(X.toarray(), y)
    sparse_svc = SVC(**kernel).fit(X, y)
    from lrp_cli.text.decision import svm_decomposition
    u = vec.transform([DOC])
    a, b = svm_decomposition(sparse_svc, u, 1, None), svm_decomposition(dense_svc, u.toarray(), 1, None)
    assert a.f_x == pytest.approx(b.f_x, abs=1e-12)
    np.testing.assert_allclose(a.relevance, b.relevance, atol=1e-9)


def test_one_vs_one_svm_needs_a_pair_and_explains_its_decision(tmp_path):
    model, pipe = saved(tmp_path, make_pipeline(TfidfVectorizer(), SVC(kernel="linear",
                                                                       decision_function_shape="ovo")), "three")
    with pytest.raises(OptionError, match="pair"):
        explain_text(model, DOC)
    ovo = pipe.decision_function([DOC])[0]  # pairs (x,y), (x,z), (y,z), positive for the first
    with pytest.raises(OptionError, match="not one of the pair x,z"):
        explain_text(model, DOC, target="y", pair=("z", "x"))
    winner = explain_text(model, DOC, pair=("x", "z"))
    assert winner.target["label"] == ("x" if ovo[1] >= 0 else "z") and winner.f_x >= 0
    ex = explain_text(model, DOC, target="z", pair=("x", "z"))
    assert ex.f_x == pytest.approx(-ovo[1], abs=1e-10)
    assert abs(ex.relevance.sum() + ex.intercept - ex.f_x) <= EXACT


def test_feature_relevance_reaches_tokens_shared_over_ngrams(tmp_path):
    """A bigram's relevance is split evenly over its two words: check on a hand-made linear model."""
    texts = ["good movie", "bad movie"]
    vec = CountVectorizer(ngram_range=(1, 2)).fit(texts)
    clf = LogisticRegression().fit(vec.transform(texts), [1, 0])
    clf.coef_[:] = 0.0
    clf.coef_[0, vec.vocabulary_["good movie"]] = 2.0
    clf.coef_[0, vec.vocabulary_["good"]] = 1.0
    clf.intercept_[:] = 0.5
    path = tmp_path / "m.joblib"
    joblib.dump(make_pipeline(vec, clf), path)
    ex = explain_text(load_text_model(path), "good movie good", target=1)
    rel = {(t["text"], t["start"]): t["relevance"] for t in ex.tokens}
    # "good" x2 (1 each), "good movie" x1 (2, split 1 / 1)
    assert rel == {("good", 0): 2.0, ("movie", 5): 1.0, ("good", 11): 1.0}
    assert ex.f_x == 4.5 and ex.intercept == 0.5
