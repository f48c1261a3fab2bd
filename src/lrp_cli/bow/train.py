"""Train a BoW kernel-SVM pipeline from a folder of images (one sub-folder per class) and save it.

The saved file holds {"format": FORMAT, "pipeline": sklearn Pipeline, "metadata": dict}; the
pipeline is DenseFeatures -> CodebookMapping -> PMeansPooling -> SVC/NuSVC/OneVsRestClassifier.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.model_selection import GridSearchCV, StratifiedKFold, train_test_split
from sklearn.multiclass import OneVsRestClassifier
from sklearn.pipeline import Pipeline
from sklearn.svm import SVC, NuSVC

from lrp_cli.bow.codebook import CodebookMapping
from lrp_cli.bow.features import DenseFeatures
from lrp_cli.bow.kernels import BowKernel, make_part
from lrp_cli.bow.options import DEFAULTS
from lrp_cli.bow.pooling import PMeansPooling
from lrp_cli.bow.model import FORMAT
from lrp_cli.preprocess import IMAGE_SUFFIXES, open_image


# (name, type, default, help) for every keyword option of train_bow; the CLI builds its flags from this.


def load_image(path, max_side=None) -> np.ndarray:
    """Return an image file as float64 HxWx3 in [0, 1], downscaled so its longer side <= max_side."""
    im = open_image(Path(path)).convert("RGB")
    if max_side and max(im.size) > max_side:
        scale = max_side / max(im.size)
        im = im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))), Image.BILINEAR)
    return np.asarray(im, dtype=np.float64) / 255.0


def list_dataset(data_dir, max_per_class=None) -> tuple:
    """Return (paths, labels, classes) for data_dir/<class>/<image files>."""
    root = Path(data_dir)
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    paths, labels = [], []
    for ci, c in enumerate(classes):
        files = sorted(f for f in (root / c).iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
        files = files[:max_per_class] if max_per_class else files
        paths += files
        labels += [ci] * len(files)
    if len(classes) < 2 or len(set(labels)) < 2:
        raise ValueError(f"{root}: need at least two class sub-folders with images")
    return paths, np.array(labels), classes


def pooling_p(value):
    """Return the PMeansPooling p for a 'sum' / 'max' / numeric option."""
    if isinstance(value, str):
        v = value.lower()
        if v in ("sum", "mean"):
            return 1.0
        if v == "max":
            return "max"
        return float(v)
    return float(value)


def heuristic_gamma(name: str, X: np.ndarray) -> float:
    """Return 1 / mean pairwise distance of X, the distance that matches kernel `name` (chi2 or squared L2)."""
    if name == "chi2":
        num = (X[:, None, :] - X[None, :, :]) ** 2
        den = X[:, None, :] + X[None, :, :]
        d = np.divide(num, den, out=np.zeros_like(num), where=den > 0).sum(axis=2)
    else:
        sq = (X ** 2).sum(axis=1)
        d = sq[:, None] + sq[None, :] - 2 * X @ X.T
    mean = float(d[np.triu_indices(X.shape[0], 1)].mean()) if X.shape[0] > 1 else 1.0
    return 1.0 / mean if mean > 0 else 1.0


def build_kernel(opts: dict, blocks: list, X: np.ndarray) -> BowKernel:
    """Return the BowKernel: one part per BoW block (multi-kernel) or one over all dims."""
    spans = blocks if opts["multi_kernel"] else [(0, X.shape[1])]
    sample = X[: min(400, X.shape[0])]  # gamma heuristic on a bounded sample
    parts = []
    for start, stop in spans:
        gamma = opts["gamma"]
        if gamma is None:
            gamma = heuristic_gamma(opts["kernel"], sample[:, start:stop]) if opts["kernel"] in ("chi2", "rbf") \
                else 1.0 / (stop - start) if opts["kernel"] == "poly" else 1.0
            gamma *= opts["gamma_scale"]
        parts.append(make_part(opts["kernel"], start, stop, 1.0, gamma, opts["degree"], opts["coef0"]))
    return BowKernel(parts)


def build_classifier(opts: dict, kernel: BowKernel, n_classes: int):
    """Return (unfitted classifier, parameter grid for cross-validation)."""
    if opts["classifier"] == "nusvc":
        svm, grid = NuSVC(kernel=kernel), {"nu": list(opts["nu_grid"])}
    else:
        svm, grid = SVC(kernel=kernel), {"C": list(opts["c_grid"])}
    if n_classes > 2 and opts["multiclass"] == "ovr":
        return OneVsRestClassifier(svm), {f"estimator__{k}": v for k, v in grid.items()}
    return svm, grid


def _blocks(mapping: CodebookMapping) -> list:
    """Return the (start, stop) BoW dims of each feature group."""
    ends = np.cumsum([0] + mapping.n_dims())
    return [(int(a), int(b)) for a, b in zip(ends[:-1], ends[1:])]


def _common_size(images) -> list | None:
    """Return [H, W] when all images share it, else None."""
    sizes = {im.shape[:2] for im in images}
    return list(next(iter(sizes))) if len(sizes) == 1 else None


def save_model(payload: dict, out_path) -> None:
    """Write the model payload with skops (.skops) or joblib (anything else)."""
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix.lower() == ".skops":
        import skops.io as sio

        sio.dump(payload, out)
    else:
        import joblib

        joblib.dump(payload, out, compress=3)


def train_bow(data_dir, out_path, progress=None, **options) -> dict:
    """Return the metadata of a BoW kernel-SVM trained on data_dir/<class>/*.png and saved to out_path.

    Keyword options (see lrp_cli.bow.options.TRAIN_OPTIONS for types, defaults and help): scales, step,
    color, quantiles, n_words, mapping, rank_p, rank_n, soft_beta, sparse_alpha, pooling, kernel,
    multi_kernel, gamma, gamma_scale, degree, coef0, classifier, multiclass, c_grid, nu_grid, cv,
    test_fraction, max_per_class, max_side, tile_stride, kmeans_samples, n_jobs, random_state. C (or nu)
    is chosen by stratified cross-validation on the training part; the metadata records cv/train/test
    accuracy, options, classes and input_size.
    `progress(message)`, when given, is told as each stage starts.
    """
    report = progress or (lambda message: None)
    unknown = set(options) - set(DEFAULTS)
    if unknown:
        raise TypeError(f"unknown train_bow options: {', '.join(sorted(unknown))}")
    opts = {**DEFAULTS, **options}
    t0 = time.perf_counter()
    paths, y, classes = list_dataset(data_dir, opts["max_per_class"])
    report(f"loading {len(paths)} images of {len(classes)} classes")
    images = [load_image(p, opts["max_side"]) for p in paths]
    idx_train, idx_test = _split(y, opts)
    features = DenseFeatures(scales=tuple(float(s) for s in opts["scales"]), step=opts["step"],
                             color=opts["color"], quantiles=bool(opts["quantiles"]))
    mapping = CodebookMapping(n_words=opts["n_words"], mapping=opts["mapping"], rank_p=opts["rank_p"],
                              rank_n=opts["rank_n"], soft_beta=opts["soft_beta"],
                              sparse_alpha=opts["sparse_alpha"],
                              max_fit_samples=opts["kmeans_samples"], random_state=opts["random_state"])
    pooling = PMeansPooling(p=pooling_p(opts["pooling"]))
    report("extracting local features")
    local = features.fit_transform(images)
    report(f"fitting the codebook ({opts['n_words']} words per group, {opts['mapping']} mapping)")
    mapping.fit([local[i] for i in idx_train])
    X = pooling.fit_transform(mapping.transform(local))
    t_features = time.perf_counter() - t0
    kernel = build_kernel(opts, _blocks(mapping), X[idx_train])
    clf, grid = build_classifier(opts, kernel, len(classes))
    report(f"cross-validating the {opts['kernel']} SVM ({opts['cv']} folds)")
    search = GridSearchCV(clf, grid, cv=StratifiedKFold(opts["cv"], shuffle=True, random_state=opts["random_state"]),
                          n_jobs=opts["n_jobs"], refit=True)
    search.fit(X[idx_train], y[idx_train])
    pipe = Pipeline([("features", features), ("mapping", mapping), ("pooling", pooling),
                     ("svm", search.best_estimator_)])
    meta = _metadata(opts, classes, images, y, idx_train, idx_test, X, search, t0, t_features)
    save_model({"format": FORMAT, "version": 1, "pipeline": pipe, "metadata": meta}, out_path)
    meta["path"] = str(out_path)
    meta["file_bytes"] = Path(out_path).stat().st_size
    return meta


def _split(y: np.ndarray, opts: dict) -> tuple:
    """Return (train indices, test indices) stratified by class."""
    idx = np.arange(len(y))
    if not opts["test_fraction"]:
        return idx, idx[:0]
    return train_test_split(idx, test_size=opts["test_fraction"], stratify=y, random_state=opts["random_state"])


def _metadata(opts, classes, images, y, idx_train, idx_test, X, search, t0, t_features) -> dict:
    """Return the JSON-friendly metadata stored with the model."""
    best = search.best_estimator_
    size = _common_size(images)
    stride = opts["tile_stride"] or (max(size) // 3 if size else None)
    return {
        "kind": "sklearn-bow",
        "classes": list(classes),
        "n_images": int(len(y)),
        "n_train": int(len(idx_train)),
        "n_test": int(len(idx_test)),
        "input_size": size,
        "tile_stride": stride,
        "cv_accuracy": float(search.best_score_),
        "best_params": {k: float(v) for k, v in search.best_params_.items()},
        "train_accuracy": float((best.predict(X[idx_train]) == y[idx_train]).mean()),
        "test_accuracy": float((best.predict(X[idx_test]) == y[idx_test]).mean()) if len(idx_test) else None,
        "accuracy": float((best.predict(X[idx_test]) == y[idx_test]).mean()) if len(idx_test)
        else float(search.best_score_),
        "bow_dims": int(X.shape[1]),
        "seconds_features": round(t_features, 2),
        "seconds_total": round(time.perf_counter() - t0, 2),
        "options": {k: (list(v) if isinstance(v, tuple) else v) for k, v in opts.items()},
    }
