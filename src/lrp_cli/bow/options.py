"""The options of `lrp train-bow` / `train_bow` with types, defaults and help (no heavy imports: the CLI
builds its command from this list at start-up)."""

KERNEL_NAMES = ("linear", "hik", "additive_chi2", "chi2", "rbf", "poly")

TRAIN_OPTIONS = [
    ("scales", "floats", (2.0, 3.0), "SIFT scales; support side = 12 * scale px (one BoW block per scale)"),
    ("step", "int", None, "dense grid step in px (default: 2 * scale)"),
    ("color", "choice:grey,rgb", "grey", "SIFT on grey values, or per colour channel"),
    ("quantiles", "bool", False, "add colour-quantile local features (own codebook per scale)"),
    ("n_words", "int", 128, "codebook size per feature group (k-means)"),
    ("mapping", "choice:hard,soft,rank,sparse", "rank",
     "local feature mapping m(l): hard, soft (Eq 36), rank (Eq 64), sparse (l1-regularized coding, Eqs 37-38)"),
    ("rank_p", "float", 2.0, "rank mapping base p (Eq 64)"),
    ("rank_n", "int", 4, "rank mapping: number of nearest words n (Eq 64)"),
    ("soft_beta", "float", None, "soft mapping beta (default: 1 / mean nearest-word distance)"),
    ("sparse_alpha", "float", 0.05, "sparse mapping: weight of the l1 regularizer (Eq 37)"),
    ("pooling", "str", "sum", "p-means pooling: 'sum' (p=1), 'max', or a number p (Eq 19)"),
    ("kernel", "choice:" + ",".join(KERNEL_NAMES), "chi2", "SVM kernel"),
    ("multi_kernel", "bool", True, "one kernel per feature group, summed (Eq 21)"),
    ("gamma", "float", None, "kernel gamma (default: 1 / mean distance over training pairs, per block)"),
    ("gamma_scale", "float", 1.0, "multiplier applied to the heuristic gamma"),
    ("degree", "int", 3, "polynomial kernel degree"),
    ("coef0", "float", 1.0, "polynomial kernel offset"),
    ("classifier", "choice:svc,nusvc", "svc", "SVC (cross-validates C) or NuSVC (cross-validates nu)"),
    ("multiclass", "choice:ovr,ovo", "ovr", "more than two classes: one-vs-rest or one-vs-one"),
    ("c_grid", "floats", (0.1, 1.0, 10.0, 100.0, 1000.0), "C values tried by cross-validation"),
    ("nu_grid", "floats", (0.1, 0.3, 0.5), "nu values tried by cross-validation (NuSVC)"),
    ("cv", "int", 3, "cross-validation folds"),
    ("test_fraction", "float", 0.2, "held-out fraction for the reported test accuracy (0: none)"),
    ("max_per_class", "int", None, "use at most this many images per class"),
    ("max_side", "int", None, "downscale images whose longer side exceeds this"),
    ("tile_stride", "int", None, "default tile stride for explanations (default: a third of the image size)"),
    ("kmeans_samples", "int", 50000, "descriptors per group used to fit k-means"),
    ("n_jobs", "int", 1, "parallel jobs for cross-validation"),
    ("random_state", "int", 0, "seed for splits, k-means and sampling"),
]
DEFAULTS = {name: default for name, _, default, _ in TRAIN_OPTIONS}
