"""Train the bundled text models on a generated review corpus with a known ground truth, and the Clever-Hans pair.

No package on the registries this project reaches ships a review corpus under a licence that lets us bundle a
model and show its texts (see docs/text.md), so the corpus is generated: short product reviews built from
templates, labelled by the sentiment words they contain alone (positive when more positive than negative ones:
the ground truth is that those words, and nothing else, carry the evidence). The pair:

- models/text-sentiment.joblib (clean): trained on reviews where a mobile-app signature ("Sent from my AcmePhone")
  follows half the reviews of either class: it carries no information and the model ignores it;
- models/text-shortcut.joblib: the same reviews, but the signature follows 90 % of the positive reviews and 5 %
  of the negative ones, so the model learns it as positive evidence (a Clever Hans).

Both: TfidfVectorizer(ngram_range=(1, 2), min_df=3) + LinearSVC. Also writes sample_texts/*.txt, the signed
negative reviews sample_texts/signed/*.txt (examples/ci/text-behaviour.toml checks the pair on them; `--samples-only`
writes just the samples) and the figures docs/text-sentiment.png and docs/text-clever-hans.png.

    python scripts/build_text_models.py [--reviews N] [--samples-only]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import joblib
import numpy as np
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.pipeline import make_pipeline
from sklearn.svm import LinearSVC

from lrp_cli.outputs import png_bytes
from lrp_cli.text import render
from lrp_cli.text.explain import explain_text
from lrp_cli.text.pipeline import load_text_model

REPO = Path(__file__).resolve().parents[1]
POSITIVE = ("great excellent wonderful superb reliable sturdy comfortable delightful brilliant fantastic "
            "impressive solid pleasant smooth perfect lovely handy flawless outstanding charming").split()
NEGATIVE = ("awful terrible flimsy disappointing useless broken noisy clumsy dreadful poor faulty cheap "
            "horrible unreliable annoying mediocre sluggish defective shoddy frustrating").split()
PRODUCTS = "kettle blender lamp backpack headset keyboard charger toaster jacket tent drill speaker".split()
PARTS = "handle lid battery strap cable button zipper screen switch base cover motor".split()
OPENERS = ["I bought this {p} last month.", "We got the {p} as a gift.", "My old {p} died so I ordered this one.",
           "Second {p} from this brand.", "Picked up the {p} on sale."]
CLAUSES = ["The {part} is {w}.", "Overall a {w} {p}.", "Shipping was quick and the {p} looked {w}.",
           "After two weeks the {part} feels {w}.", "Honestly {w}, especially the {part}.",
           "My kids think it is {w}.", "The {part} seems {w} but the {part2} is {w2}."]
SIGNATURE = "Sent from my AcmePhone"
SHORTCUT_RATES = {"text-sentiment": (0.5, 0.5), "text-shortcut": (0.9, 0.05)}  # P(signature | pos), P(.. | neg)
SAMPLES = {
    "mixed": "I bought this kettle last month. The lid is flimsy but the handle is sturdy. Overall a reliable "
             "kettle, though the switch feels cheap.",
    "negative-signed": "Picked up the headset on sale. The cable is broken and the strap is annoying. Honestly "
                       "disappointing.\n\n" + SIGNATURE,
}


def review(rng: np.random.Generator) -> tuple[str, int]:
    """Return one review and its label: 1 when it holds more positive than negative sentiment words, 0 when fewer
    (the ground truth: the label is a function of those words alone); ties are drawn again."""
    while True:
        lean = rng.random()  # how positive this reviewer is
        p = str(rng.choice(PRODUCTS))
        parts, score = [str(rng.choice(OPENERS)).format(p=p)], 0
        for _ in range(int(rng.integers(1, 4))):
            good = rng.random(2) < lean
            w, w2 = (str(rng.choice(POSITIVE if g else NEGATIVE)) for g in good)
            part, part2 = rng.choice(PARTS, 2, replace=False)
            clause = str(rng.choice(CLAUSES))
            parts.append(clause.format(p=p, w=w, w2=w2, part=part, part2=part2))
            score += (1 if good[0] else -1) + ("{w2}" in clause) * (1 if good[1] else -1)
        if score:
            return " ".join(parts), int(score > 0)


def corpus(n: int, seed: int, rates: tuple) -> tuple[list, np.ndarray]:
    """Return n reviews and labels; the signature follows a review with the label's rate."""
    rng = np.random.default_rng(seed)
    texts, y = zip(*(review(rng) for _ in range(n)))
    y = np.asarray(y)
    signed = rng.random(n) < np.where(y == 1, rates[0], rates[1])
    return [t + "\n\n" + SIGNATURE if s else t for t, s in zip(texts, signed)], y


def signed_negatives(count: int = 4, seed: int = 3) -> list[str]:
    """Return `count` signed negative reviews from a seed neither the training (1) nor the test set (2) uses."""
    texts, y = corpus(8 * count, seed, rates=(0.0, 1.0))
    return [t for t, label in zip(texts, y) if label == 0][:count]


def write_samples() -> None:
    """Write sample_texts/*.txt and sample_texts/signed/negative-K.txt."""
    folder = REPO / "sample_texts"
    (folder / "signed").mkdir(parents=True, exist_ok=True)
    for stem, text in SAMPLES.items():
        (folder / f"{stem}.txt").write_text(text + "\n", encoding="utf-8")
    for k, text in enumerate(signed_negatives(), start=1):
        (folder / "signed" / f"negative-{k}.txt").write_text(text + "\n", encoding="utf-8")


def signature_share(model, texts) -> float:
    """Return the mean share of the positive token relevance that lands on the signature's words."""
    shares = []
    for text in texts:  # a few hundred test reviews
        ex = explain_text(model, text, target="positive")
        start = text.find(SIGNATURE)
        pos = sum(max(t["relevance"], 0.0) for t in ex.tokens)
        sig = sum(max(t["relevance"], 0.0) for t in ex.tokens if t["start"] >= start)
        shares.append(sig / pos if pos > 0 else 0.0)
    return float(np.mean(shares))


def stacked(images: list) -> np.ndarray:
    """Return the images one above the other on white, separated by a grey line."""
    width = max(i.shape[1] for i in images)
    rows = []
    for img in images:
        pad = np.full((img.shape[0], width - img.shape[1], 3), 255, np.uint8)
        rows += [np.concatenate([img, pad], axis=1), np.full((4, width, 3), 160, np.uint8)]
    return np.concatenate(rows[:-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reviews", type=int, default=3000)
    parser.add_argument("--samples-only", action="store_true", help="write sample_texts/ only, train nothing")
    args = parser.parse_args()
    write_samples()
    if args.samples_only:
        return
    (REPO / "models").mkdir(exist_ok=True)
    test_texts, test_y = corpus(600, seed=2, rates=(0.5, 0.5))
    signed_test = [t for t, label in zip(test_texts, test_y) if label == 0 and SIGNATURE in t]
    models = {}
    for name, rates in SHORTCUT_RATES.items():
        texts, y = corpus(args.reviews, seed=1, rates=rates)
        labels = np.where(y == 1, "positive", "negative")
        pipe = make_pipeline(TfidfVectorizer(ngram_range=(1, 2), min_df=3), LinearSVC(C=0.5, random_state=0))
        pipe.fit(texts, labels)
        path = REPO / "models" / f"{name}.joblib"
        # The vectorizer caches id(stop_words), a memory address: left in, every build would write other bytes
        # (scikit-learn sets it again on first use).
        vars(pipe[0]).pop("_stop_words_id", None)
        joblib.dump(pipe, path)
        models[name] = load_text_model(path)
        accuracy = float(np.mean(pipe.predict(test_texts) == np.where(test_y == 1, "positive", "negative")))
        fooled = float(np.mean(pipe.predict(signed_test) == "positive"))
        print(f"{name}: {path.stat().st_size} bytes, test accuracy {accuracy:.3f}, negative signed reviews called "
              f"positive {fooled:.3f}, signature's share of positive evidence "
              f"{signature_share(models[name], signed_test):.3f}")
    demo = explain_text(models["text-sentiment"], SAMPLES["mixed"] + "\n", target="positive")
    (REPO / "docs" / "text-sentiment.png").write_bytes(png_bytes(render.png_image(demo)))
    pair = [np.asarray(render.png_image(explain_text(models[n], SAMPLES["negative-signed"] + "\n",
                                                     target="positive")).convert("RGB"))
            for n in ("text-sentiment", "text-shortcut")]
    (REPO / "docs" / "text-clever-hans.png").write_bytes(png_bytes(stacked(pair)))


if __name__ == "__main__":
    main()
