"""Train the bundled LSTM sentiment model on the generated review corpus of the scikit-learn text demo
(scripts/build_text_models.py: the same generator, seeds and test set) and export it to ONNX.

Writes models/text-lstm.onnx, its sidecar models/text-lstm.lrp.toml ([text] section: vocabulary, unknown and
padding ids) and its vocabulary models/text-lstm.vocab.txt (one token per line, id = line number). The model:
nn.Embedding(V, 32, padding_idx=0) -> nn.LSTM(32, 32) -> the last hidden state -> nn.Linear(32, 2); the token
axis is dynamic, so a review is read as long as it is. Training batches pad on the left, so that the last state
is the last word's. Needs torch (dev-only):

    python scripts/build_text_lstm.py            # train and export (torch, onnx)
    python scripts/build_text_lstm.py --figure   # docs/text-lstm.png with lrp-cli (no torch)
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from build_text_models import SAMPLES, corpus  # noqa: E402  (the generator of the scikit-learn text demo)

REPO = Path(__file__).resolve().parents[1]
MODEL = REPO / "models" / "text-lstm.onnx"
VOCAB = MODEL.with_name("text-lstm.vocab.txt")
PATTERN = r"\w+|[^\w\s]"  # lrp-cli's default [text] token_pattern
PAD, UNK = "<pad>", "<unk>"
EMBED = HIDDEN = 32
SIDECAR = """# The LSTM sentiment demo (scripts/build_text_lstm.py): text -> token ids as below.
labels = ["negative", "positive"]

[text]
vocabulary = "text-lstm.vocab.txt"
lowercase = true
unknown_id = 1
padding_id = 0
"""


def tokens(text: str) -> list[str]:
    """Return the lowercased tokens of a text, as the sidecar tells lrp-cli to split it."""
    return re.findall(PATTERN, text.lower())


def vocabulary(texts: list[str], min_count: int = 2) -> list[str]:
    """Return the id -> token list: padding, unknown, then the tokens seen at least min_count times, sorted."""
    counts = Counter(t for text in texts for t in tokens(text))
    return [PAD, UNK] + sorted(t for t, c in counts.items() if c >= min_count)


def encode(texts: list[str], vocab: list[str]) -> np.ndarray:
    """Return the [N, T] int64 ids of the texts, padded on the left to the longest."""
    index = {t: i for i, t in enumerate(vocab)}
    rows = [[index.get(t, 1) for t in tokens(text)] for text in texts]
    out = np.zeros((len(rows), max(map(len, rows))), np.int64)
    for k, row in enumerate(rows):
        out[k, out.shape[1] - len(row):] = row
    return out


def train_and_export(epochs: int) -> None:
    """Train the LSTM on the clean corpus (3000 reviews, seed 1), print its held-out accuracy (600, seed 2),
    write the ONNX file, sidecar and vocabulary."""
    import torch
    from torch import nn

    torch.manual_seed(0)

    class Sentiment(nn.Module):
        def __init__(self, size: int):
            super().__init__()
            self.embed = nn.Embedding(size, EMBED, padding_idx=0)
            self.lstm = nn.LSTM(EMBED, HIDDEN, batch_first=True)
            self.out = nn.Linear(HIDDEN, 2)

        def forward(self, ids):
            y, _ = self.lstm(self.embed(ids))
            return self.out(y[:, -1])

    texts, y = corpus(3000, seed=1, rates=(0.5, 0.5))
    test_texts, test_y = corpus(600, seed=2, rates=(0.5, 0.5))
    vocab = vocabulary(texts)
    x, xt = torch.from_numpy(encode(texts, vocab)), torch.from_numpy(encode(test_texts, vocab))
    labels = torch.from_numpy(y)
    model = Sentiment(len(vocab))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for epoch in range(epochs):
        order = torch.randperm(len(x))
        for start in range(0, len(x), 64):
            batch = order[start:start + 64]
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(x[batch]), labels[batch]).backward()
            optimizer.step()
        with torch.no_grad():
            accuracy = float((model(xt).argmax(1).numpy() == test_y).mean())
        print(f"epoch {epoch + 1}: held-out accuracy {accuracy:.3f}")
    MODEL.parent.mkdir(exist_ok=True)
    VOCAB.write_text("\n".join(vocab) + "\n", encoding="utf-8")
    MODEL.with_name("text-lstm.lrp.toml").write_text(SIDECAR, encoding="utf-8")
    torch.onnx.export(model.eval(), (x[:1],), MODEL, dynamo=False, input_names=["ids"], output_names=["logits"],
                      dynamic_axes={"ids": {1: "tokens"}}, opset_version=17)
    print(f"{MODEL.name}: {MODEL.stat().st_size} bytes, {len(vocab)} tokens, held-out accuracy {accuracy:.3f} "
          f"on {len(test_y)} reviews")


def figure() -> None:
    """Write docs/text-lstm.png: the LSTM's word heatmap of the SVM demo's sample sentence (target positive)."""
    from lrp_cli.explanation import Settings
    from lrp_cli.kinds import InputItem, load_model
    from lrp_cli.outputs import png_bytes
    from lrp_cli.text import render
    from lrp_cli.text.inputs import TextItem

    model = load_model(MODEL)
    item = TextItem("mixed", text=SAMPLES["mixed"] + "\n", source=(("kind", "text"),))
    settings = Settings(target="positive")
    expl = model.explain(model.prepare(InputItem(Path("mixed"), "mixed", item), settings), settings)[0]
    (REPO / "docs" / "text-lstm.png").write_bytes(png_bytes(render.png_image(expl.extra["text"])))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--figure", action="store_true", help="write docs/text-lstm.png instead of training")
    args = parser.parse_args()
    figure() if args.figure else train_and_export(args.epochs)


if __name__ == "__main__":
    main()
