"""Image loading and model input preparation: presets, geometry, the model sidecar (`MODEL.lrp.toml`)."""

from __future__ import annotations

import re
import tomllib
import warnings
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from lrp_cli.errors import InputError, ModelLoadError, OptionError
from lrp_cli.rules import COMPOSITES
from lrp_cli.signals import read_signal_csv

#: Per preset: (scale applied to 0..255 pixels, mean, std, BGR channel order); mean/std in model channel order.
PRESETS = {
    "imagenet": (1 / 255, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), False),
    "caffe": (1.0, (104.0, 117.0, 123.0), (1.0, 1.0, 1.0), True),
    "unit": (1 / 255, (0.0,), (1.0,), False),
    "tf": (1 / 127.5, (1.0,), (1.0,), False),
    "none": (1.0, (0.0,), (1.0,), False),
}
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif"}
#: What a folder of an image model's inputs yields: images and preprocessed `.npy` tensors.
IMAGE_INPUT_SUFFIXES = IMAGE_SUFFIXES | {".npy"}
#: Inputs already in the model's tensor form: a `.npy` array, or a `.csv` signal (one column per channel).
TENSOR_SUFFIXES = (".npy", ".csv")
SIDECAR_KEYS = {"preset", "size", "resize", "crop", "mean", "std", "bgr", "labels", "composite", "output", "layout",
                "training", "text"}
LAYOUTS = ("nchw", "nhwc")


@dataclass(frozen=True)
class PreprocessConfig:
    """How an image becomes a model input: preset, size (H, W), optional shorter-side resize or crop fraction."""

    preset: str = "imagenet"
    size: tuple[int, int] | None = None
    resize: int | None = None
    crop: float | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    bgr: bool | None = None

    def __post_init__(self):
        if self.preset not in PRESETS:
            raise OptionError(f"--preset: unknown preset '{self.preset}'; presets: {', '.join(PRESETS)}")

    def merged(self, **overrides) -> "PreprocessConfig":
        """Returns this config with every override that is not None applied."""
        return replace(self, **{k: v for k, v in overrides.items() if v is not None})

    def normalization(self, channels: int) -> tuple[float, np.ndarray, np.ndarray, bool]:
        """Returns (scale, mean[C], std[C], bgr) in model channel order for a C-channel input."""
        scale, mean, std, bgr = PRESETS[self.preset]
        mean = _per_channel("--mean", self.mean or mean, channels)
        std = _per_channel("--std", self.std or std, channels)
        return scale, mean, std, bool(bgr if self.bgr is None else self.bgr)

    def mean_pixel(self, channels: int) -> np.ndarray:
        """Returns the per-channel model-input value of the preset's mean pixel: 0, since normalization subtracts
        that mean whatever --mean/--std say (with no mean, as in `unit`, the "mean" is black)."""
        return np.zeros(channels)

    def input_bounds(self, channels: int) -> tuple[np.ndarray, np.ndarray]:
        """Returns per-channel (low, high) of preprocessed pixels: the z^B box implied by the preset."""
        scale, mean, std, _ = self.normalization(channels)
        return (0.0 - mean) / std, (255.0 * scale - mean) / std


def _per_channel(option: str, values, channels: int) -> np.ndarray:
    """Returns `values` as one number per model channel: a single value is repeated, and the three RGB values
    of a preset are averaged for a one-channel (grey) input, which the image is converted to."""
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    if values.size == 3 and channels == 1:
        values = values.mean(keepdims=True)
    if values.size not in (1, channels):
        raise OptionError(f"{option}: {values.size} values for a model input with {channels} channels")
    return np.broadcast_to(values, (channels,))


@dataclass
class Sidecar:
    """The settings a model carries in `MODEL.lrp.toml` beside it."""

    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    labels: list[str] | None = None
    composite: str | None = None
    output: str | None = None
    layout: str | None = None
    extra: dict = field(default_factory=dict)
    text: dict = field(default_factory=dict)  # [text]: the tokens of a token-id input (docs/sequences.md)


def sidecar_path(model_path: Path) -> Path:
    """Returns where the sidecar of a model file lives: same folder, same stem, `.lrp.toml`."""
    return model_path.with_name(model_path.stem + ".lrp.toml")


def read_labels(path: Path) -> list[str]:
    """Returns the class labels of a text file, one per line."""
    try:
        return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except OSError as exc:
        raise OptionError(f"{path}: cannot read labels ({exc.strerror})") from None


def load_sidecar(model_path: Path) -> Sidecar:
    """Returns the model's sidecar settings, or defaults when it has none."""
    path = sidecar_path(model_path)
    if not path.exists():
        return Sidecar()
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ModelLoadError(f"{path}: invalid sidecar TOML ({exc})") from None
    unknown = set(data) - SIDECAR_KEYS
    if unknown:
        raise ModelLoadError(f"{path}: unknown sidecar keys {sorted(unknown)}; known: {sorted(SIDECAR_KEYS)}")
    for key, value in data.items():
        check, expected = SIDECAR_CHECKS[key]
        if not check(value):
            raise ModelLoadError(f"{path}: {key} = {value!r}: expected {expected}")
    _check_text(path, data.get("text", {}))
    names = {f.name for f in fields(PreprocessConfig)}
    config = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items() if k in names}
    labels = data.get("labels")
    try:
        labels = read_labels(path.parent / labels) if isinstance(labels, str) else labels
        preprocess = PreprocessConfig(**config)
    except OptionError as exc:
        raise ModelLoadError(f"{path}: {exc}") from None
    return Sidecar(preprocess, labels, data.get("composite"), data.get("output"), data.get("layout"),
                   data.get("training", {}), data.get("text", {}))


def _check_text(path: Path, table: dict) -> None:
    """Raises the one-line ModelLoadError of the first [text] key that is unknown or has a value of the wrong
    kind."""
    for key, value in table.items():
        if key not in TEXT_CHECKS:
            raise ModelLoadError(f"{path}: unknown [text] key {key!r}; known: {sorted(TEXT_CHECKS)}")
        check, expected = TEXT_CHECKS[key]
        if not check(value):
            raise ModelLoadError(f"{path}: [text] {key} = {value!r}: expected {expected}")


def _regex(value) -> bool:
    try:
        return isinstance(value, str) and re.compile(value).pattern != ""
    except re.error:
        return False


def _positive_ints(value, count: int) -> bool:
    return (isinstance(value, list) and len(value) == count
            and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value))


def _ints(value) -> bool:
    values = value if isinstance(value, list) else [value]
    return all(isinstance(v, int) and not isinstance(v, bool) for v in values)


def _numbers(value) -> list | None:
    values = value if isinstance(value, list) else [value]
    ok = values and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
    return values if ok else None


#: Sidecar key -> (test of its value, what the error says is expected).
SIDECAR_CHECKS = {
    "preset": (lambda v: isinstance(v, str) and v in PRESETS, f"one of {', '.join(PRESETS)}"),
    "size": (lambda v: _positive_ints(v, 2), "[H, W], two positive integers"),
    "resize": (lambda v: _positive_ints([v], 1), "a positive integer"),
    "crop": (lambda v: bool(_numbers(v)) and not isinstance(v, list) and 0 < v <= 1, "a number in (0, 1]"),
    "mean": (lambda v: bool(_numbers(v)), "a number or a list of numbers"),
    "std": (lambda v: bool(_numbers(v)) and 0 not in _numbers(v), "non-zero numbers"),
    "bgr": (lambda v: isinstance(v, bool), "true or false"),
    "labels": (lambda v: isinstance(v, str) or (isinstance(v, list) and all(isinstance(x, str) for x in v)),
               "a labels file beside the sidecar or a list of strings"),
    "composite": (lambda v: isinstance(v, str) and v in COMPOSITES, f"one of {', '.join(COMPOSITES)}"),
    "output": (lambda v: isinstance(v, str), "the name of a graph output"),
    "layout": (lambda v: isinstance(v, str) and v in LAYOUTS, f"one of {', '.join(LAYOUTS)}"),
    "training": (lambda v: isinstance(v, dict), "a table"),
    "text": (lambda v: isinstance(v, dict), "a table (docs/sequences.md)"),
}

#: [text] key -> (test of its value, what the error says is expected): how text becomes token ids.
TEXT_CHECKS = {
    "padding_id": (_ints, "ID or [ID, ...], integers"),
    "vocabulary": (lambda v: isinstance(v, str) and v != "",
                   "a file beside the sidecar: one token per line (id = line number from 0) or JSON token -> id"),
    "lowercase": (lambda v: isinstance(v, bool), "true or false"),
    "token_pattern": (_regex, "a non-empty regular expression (Python re)"),
    "unknown_id": (lambda v: _ints(v) and not isinstance(v, list), "an integer"),
    "start_id": (lambda v: _ints(v) and not isinstance(v, list), "an integer"),
    "end_id": (lambda v: _ints(v) and not isinstance(v, list), "an integer"),
    "length": (lambda v: _positive_ints([v], 1), "a positive integer"),
    "padding_side": (lambda v: v in ("right", "left"), "right or left"),
}


def open_image(path: Path) -> Image.Image:
    """Returns the decoded image (first frame of an animation), fully read so truncation shows here."""
    try:
        with warnings.catch_warnings():
            # Pillow's warnings about damaged metadata would print as multi-line Python warnings; a file that
            # decodes is used. Between Pillow's pixel limit and twice that it only warns, but decoding such a
            # file can still take gigabytes, so both are refused.
            warnings.simplefilter("ignore")
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                img.seek(0)
                img.load()
                return img.copy()
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise InputError(f"{path}: image larger than Pillow's decompression-bomb limit of "
                         f"{Image.MAX_IMAGE_PIXELS} pixels; refusing to decode it") from None
    except UnidentifiedImageError:
        raise InputError(f"{path}: not an image (unrecognized format)") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise InputError(f"{path}: cannot decode image ({exc})") from None


def fit_geometry(img: Image.Image, config: PreprocessConfig, size: tuple[int, int],
                 resample: int = Image.BILINEAR) -> Image.Image:
    """Returns the image resized/cropped to size (H, W): shorter side to `resize` then center crop, or a
    central `crop` fraction then resize, or a plain resize. Masks pass Image.NEAREST to stay binary."""
    height, width = size
    if config.crop:
        w, h = img.size
        cw, ch = round(w * config.crop), round(h * config.crop)
        img = img.crop(((w - cw) // 2, (h - ch) // 2, (w - cw) // 2 + cw, (h - ch) // 2 + ch))
    if config.resize:
        w, h = img.size
        factor = config.resize / min(w, h)
        img = img.resize((max(width, round(w * factor)), max(height, round(h * factor))), resample)
        w, h = img.size
        left, top = (w - width) // 2, (h - height) // 2
        return img.crop((left, top, left + width, top + height))
    return img.resize((width, height), resample)


def image_to_tensor(img: Image.Image, config: PreprocessConfig, input_shape: tuple[int, ...]) -> np.ndarray:
    """Returns the float32 [1, C, H, W] model input of an image already at the model size."""
    channels = input_shape[1]
    pixels = np.asarray(img.convert("L" if channels == 1 else "RGB"), dtype=np.float64)
    pixels = pixels[:, :, None] if pixels.ndim == 2 else pixels
    scale, mean, std, bgr = config.normalization(channels)
    if bgr:
        pixels = pixels[:, :, ::-1]
    tensor = (pixels * scale - mean) / std
    return tensor.transpose(2, 0, 1)[None].astype(np.float32)


def tensor_to_display(tensor: np.ndarray, config: PreprocessConfig) -> Image.Image:
    """Returns an RGB picture of a [1, C, H, W] model input, undoing the preset's normalization."""
    channels = tensor.shape[1]
    scale, mean, std, bgr = config.normalization(channels)
    pixels = (tensor[0].transpose(1, 2, 0).astype(np.float64) * std + mean) / scale
    if bgr:
        pixels = pixels[:, :, ::-1]
    if not np.isfinite(pixels).all() or pixels.min() < -1 or pixels.max() > 256:
        pixels = (pixels - pixels.min()) / max(np.ptp(pixels), 1e-12) * 255
    pixels = np.clip(pixels, 0, 255).astype(np.uint8)
    return Image.fromarray(pixels[:, :, 0] if channels == 1 else pixels[:, :, :3]).convert("RGB")


def to_nchw(array_or_shape, layout: str):
    """Returns an NHWC tensor (or shape) in NCHW order; NCHW ones unchanged."""
    if layout != "nhwc":
        return array_or_shape
    if isinstance(array_or_shape, np.ndarray):
        return array_or_shape.transpose(0, 3, 1, 2)
    n, h, w, c = array_or_shape
    return (n, c, h, w)


def from_nchw(tensor: np.ndarray, layout: str) -> np.ndarray:
    """Returns an NCHW tensor in the model's layout."""
    return tensor.transpose(0, 2, 3, 1) if layout == "nhwc" else tensor


def load_input(path: Path, config: PreprocessConfig, input_shape: tuple[int, ...],
               layout: str = "nchw") -> tuple[np.ndarray, Image.Image]:
    """Returns (model input float32 tensor in the model's layout, RGB picture at the model input size) for an
    image, a `.npy` file or a `.csv` signal."""
    if path.suffix.lower() in TENSOR_SUFFIXES:
        tensor = load_tensor(path, input_shape)
        return tensor, tensor_to_display(to_nchw(tensor, layout), config) if len(input_shape) == 4 else None
    if len(input_shape) != 4:
        raise InputError(f"{path}: the model input {list(input_shape)} is not an image; give a .npy tensor")
    nchw = to_nchw(tuple(input_shape), layout)
    img = open_image(path)
    size = config.size or tuple(nchw[2:])
    img = fit_geometry(img.convert("RGB"), config, size)
    return from_nchw(image_to_tensor(img, config, nchw), layout), img


def shape_text(shape: tuple) -> str:
    """Returns a shape as "[1, 3, ?, ?]", with ? for a symbolic (None) dimension."""
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


def fits_shape(shape: tuple[int, ...], model_shape: tuple) -> bool:
    """Returns True when a shape equals the model's, a None (symbolic) model dimension matching any size."""
    return len(shape) == len(model_shape) and all(m is None or m == d for d, m in zip(shape, model_shape))


def load_tensor(path: Path, input_shape: tuple[int, ...]) -> np.ndarray:
    """Returns a `.npy` tensor (or a `.csv` signal, channels x time) as float32 in exactly the model input shape (a
    missing batch axis is added; a None dimension of the model shape takes the tensor's size)."""
    array = _open_tensor(path)
    array = array.reshape(_fitted_shape(path, array.shape, input_shape))
    if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise InputError(f"{path}: tensor dtype {array.dtype} is not a real number type")
    if not np.isfinite(array).all():
        raise InputError(f"{path}: tensor holds NaN or Inf")
    return np.array(array, dtype=np.float32)  # a copy: the memory map is read-only and keeps the file open


def tensor_shape(path: Path, input_shape: tuple[int, ...]) -> tuple[int, ...]:
    """Returns the shape `load_tensor` gives a `.npy` file (read from its header without loading the data) or a
    `.csv` signal."""
    return _fitted_shape(path, _open_tensor(path).shape, input_shape)


def _open_tensor(path: Path) -> np.ndarray:
    """Returns the `.npy` array memory-mapped, so that reading its shape costs no read of its data, or a `.csv`
    signal as a [channels, time] array."""
    if path.suffix.lower() == ".csv":
        try:
            return read_signal_csv(path)
        except FileNotFoundError:
            raise InputError(f"{path}: no such file") from None
        except (OSError, ValueError) as exc:
            raise InputError(f"{path}: not a readable signal .csv ({exc})") from None
    try:
        return np.load(path, allow_pickle=False, mmap_mode="r")
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except (OSError, ValueError, EOFError) as exc:
        raise InputError(f"{path}: not a readable .npy tensor ({exc or type(exc).__name__})") from None


def _fitted_shape(path: Path, shape: tuple[int, ...], input_shape: tuple[int, ...]) -> tuple[int, ...]:
    if fits_shape(shape, input_shape[1:]):
        shape = (1, *shape)
    if not fits_shape(shape, input_shape):
        raise InputError(f"{path}: tensor shape {list(shape)} does not match the model input "
                         f"{shape_text(input_shape)}")
    return tuple(shape)


