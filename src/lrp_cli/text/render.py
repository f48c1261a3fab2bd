"""The one output module of every text model kind: a TextExplanation as JSON, HTML, PNG and terminal colours.

Colours follow the image heatmaps (lrp_cli.render): token relevance divided by max |R| over the text (Eq 35),
or as a given render.Scale says (a percentile, a global divisor), mapped from [-1, 1] through a named colormap.
The default for text is bwr, white at 0, so that unimportant words stay readable on their background; jet and
the others are available.
"""

from __future__ import annotations

import html
import json
import re
import struct
import zlib
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from lrp_cli import outputs
from lrp_cli.render import Scale, colorize, normalize
from lrp_cli.text.document import TextExplanation, to_json

DEFAULT_CMAP = "bwr"
PNG_WIDTH = 640  # text width in pixels of the bitmap font, before the 2x scale
PNG_SCALE = 2
LINE_HEIGHT = 14
MARGIN = 6
LEVELS = 254  # colormap entries of the PNG's palette; then white paper and black ink
WHITE, BLACK = LEVELS, LEVELS + 1


def token_colours(ex: TextExplanation, cmap: str = DEFAULT_CMAP, scale: Scale = Scale()) -> np.ndarray:
    """Return the uint8 (n_tokens, 3) background colour of each token."""
    if not ex.tokens:
        return np.zeros((0, 3), np.uint8)
    return colorize(normalize(ex.relevance, scale), cmap)


def _ink(rgb) -> tuple:
    """Return black or white, whichever reads better on the background `rgb`."""
    luma = 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]
    return (0, 0, 0) if luma > 140 else (255, 255, 255)


def pieces(ex: TextExplanation) -> list:
    """Return the text as consecutive pieces (string, token index or None): tokens and the gaps between them."""
    out, cursor = [], 0
    for i, tok in enumerate(ex.tokens):  # one step per token of one text
        if tok["start"] > cursor:
            out.append((ex.text[cursor:tok["start"]], None))
        out.append((ex.text[tok["start"]:tok["end"]], i))
        cursor = max(cursor, tok["end"])
    if cursor < len(ex.text):
        out.append((ex.text[cursor:], None))
    return out


def headline(ex: TextExplanation) -> str:
    """Return the one-line summary: model file, target, prediction, f(x), intercept and residual."""
    b = "n/a" if ex.intercept is None else f"{ex.intercept:+.4g}"
    return (f"{Path(ex.model.get('path', '')).name}: target {ex.target['label']} | prediction "
            f"{ex.prediction['label']} | f(x) = {ex.f_x:+.4g} | intercept {b} | residual {ex.residual:+.2g}")


def coloured(ex: TextExplanation, cmap: str = DEFAULT_CMAP, scale: Scale = Scale()) -> list:
    """Return the text as pieces (string, background, ink, relevance): tokens on their colour, gaps with Nones."""
    colours = token_colours(ex, cmap, scale)
    out = []
    for text, i in pieces(ex):
        bg = None if i is None else tuple(int(c) for c in colours[i])
        out.append((text, bg, None if bg is None else _ink(bg), None if i is None else ex.tokens[i]["relevance"]))
    return out


def _html_piece(text: str, bg, fg, relevance) -> str:
    if bg is None:
        return html.escape(text)
    return (f'<span class="t" style="background:rgb{bg};color:rgb{fg}" title="{relevance:+.6g}">'
            f'{html.escape(text)}</span>')


def html_page(ex: TextExplanation, cmap: str = DEFAULT_CMAP, scale: Scale = Scale()) -> str:
    """Return a self-contained HTML page: the text, each token on its relevance colour, the value on hover."""
    spans = [_html_piece(*piece) for piece in coloured(ex, cmap, scale)]
    feats = "".join(f"<tr><td>{html.escape(f['feature'])}</td><td>{f['value']:.4g}</td>"
                    f"<td>{f['relevance']:+.4g}</td></tr>" for f in ex.top_features)
    notes = "".join(f"<p class=note>{html.escape(n)}</p>" for n in ex.notes)
    return ("<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>"
            f"{html.escape(str(ex.source.get('path') or ex.source.get('kind', 'text')))}</title><style>"
            "body{font-family:sans-serif;max-width:60em;margin:2em auto}"
            ".text{white-space:pre-wrap;line-height:1.8;font-size:1.1em}.t{padding:1px 2px;border-radius:3px}"
            ".note{color:#555}td{padding:0 1em}</style></head><body>"
            f"<p><b>{html.escape(headline(ex))}</b></p><p>{html.escape(ex.method.get('decision', ''))}</p>"
            f"<div class=\"text\">{''.join(spans)}</div>{notes}"
            f"<table><tr><th>feature</th><th>value</th><th>relevance</th></tr>{feats}</table></body></html>\n")


SNIPPET_CHARS = 80


def snippet(document: dict) -> str:
    """Return the first words of a JSON document's text (its tokens), at most SNIPPET_CHARS characters."""
    out = ""
    for token in document.get("tokens", []):  # stops after SNIPPET_CHARS characters
        if len(out) + len(token["text"]) >= SNIPPET_CHARS:
            return out + " ..."
        out = f"{out} {token['text']}" if out else token["text"]
    return out


def _ansi_piece(text: str, bg, fg, relevance) -> str:
    if bg is None:
        return text
    return f"\x1b[48;2;{bg[0]};{bg[1]};{bg[2]}m\x1b[38;2;{fg[0]};{fg[1]};{fg[2]}m{text}\x1b[0m"


def ansi(ex: TextExplanation, cmap: str = DEFAULT_CMAP, scale: Scale = Scale()) -> str:
    """Return the text for a terminal: each token on its relevance colour (ANSI 24-bit), then the headline."""
    return "".join(_ansi_piece(*piece) for piece in coloured(ex, cmap, scale)) + "\n" + headline(ex) + "\n"


def _layout(items: list) -> list:
    """Return [(x, y, glyph mask, palette index or None)] placing the items word by word, wrapped at PNG_WIDTH."""
    placed, x, y = [], MARGIN, MARGIN
    for text, colour in items:
        for part in _words(text):  # one step per word or space of one text
            if part == "\n":
                x, y = MARGIN, y + LINE_HEIGHT
                continue
            mask = glyph(part)
            width = mask.shape[1]
            if x + width > PNG_WIDTH - MARGIN and x > MARGIN:
                x, y = MARGIN, y + LINE_HEIGHT
                if part.isspace():
                    continue
            placed.append((x, y, mask, colour))
            x += width
    return placed


#: Drawn words kept (a batch of reviews repeats its vocabulary: drawing a word once makes the PNG several times
#: faster); the cache is emptied when it holds this many.
GLYPH_CACHE = 100_000
_GLYPHS: dict[str, np.ndarray] = {}


@lru_cache(maxsize=1)
def _font():
    return ImageFont.load_default_imagefont()


def glyph(word: str) -> np.ndarray:
    """Return the bool [LINE_HEIGHT, advance width] ink mask of a Latin-1 word in Pillow's bitmap font, drawn once
    and cached."""
    mask = _GLYPHS.get(word)
    if mask is None:
        font = _font()
        img = Image.new("L", (int(font.getlength(word)), LINE_HEIGHT), 0)
        ImageDraw.Draw(img).text((0, 0), word, fill=255, font=font)
        mask = np.asarray(img) > 0
        if len(_GLYPHS) >= GLYPH_CACHE:
            _GLYPHS.clear()
        _GLYPHS[word] = mask
    return mask


def _words(text: str) -> list:
    """Return the text split into words, runs of spaces and single newlines (tabs and returns as spaces)."""
    return re.findall(r"\n|[^\S\n]+|\S+", text.replace("\r\n", "\n").replace("\t", " "))


def _latin1(text: str) -> str:
    """Return the text as the bitmap font can draw it (characters outside Latin-1 become '?')."""
    return text.encode("latin-1", "replace").decode("latin-1")


@lru_cache(maxsize=16)
def palette(cmap: str = DEFAULT_CMAP) -> np.ndarray:
    """Return the PNG's (256, 3) palette: the colormap at LEVELS values from -1 to 1, then paper white and ink
    black (an indexed image encodes several times faster than RGB, and smaller)."""
    rgb = np.zeros((256, 3), np.uint8)
    rgb[:LEVELS] = colorize(np.linspace(-1.0, 1.0, LEVELS), cmap)
    rgb[WHITE] = 255
    rgb.setflags(write=False)
    return rgb


@lru_cache(maxsize=16)
def _inks(cmap: str) -> np.ndarray:
    """Return per palette entry the index of the ink (black or white) that reads best on it."""
    return np.array([BLACK if _ink(rgb) == (0, 0, 0) else WHITE for rgb in palette(cmap)], np.uint8)


def _canvas(ex: TextExplanation, cmap: str, scale: Scale) -> np.ndarray:
    """Return the uint8 palette indices of the headline and the text heatmap, wrapped, before the PNG_SCALE."""
    levels = np.rint((normalize(ex.relevance, scale) + 1.0) / 2.0 * (LEVELS - 1)).astype(int) if ex.tokens else []
    items = [(_latin1(headline(ex)) + "\n\n", None)]
    items += [(_latin1(text), None if i is None else int(levels[i])) for text, i in pieces(ex)]
    placed = _layout(items)
    height = max((y for _, y, _, _ in placed), default=MARGIN) + LINE_HEIGHT + MARGIN
    canvas = np.full((height, PNG_WIDTH), WHITE, np.uint8)
    inks = _inks(cmap)
    for x, y, mask, level in placed:  # one step per placed word
        if level is not None:
            canvas[y - 1:y + LINE_HEIGHT - 2, x:x + mask.shape[1]] = level
        region = canvas[y:y + LINE_HEIGHT, x:x + mask.shape[1]]  # clipped at the right edge for an overlong word
        region[mask[:region.shape[0], :region.shape[1]]] = BLACK if level is None else inks[level]
    return canvas


def png_image(ex: TextExplanation, cmap: str = DEFAULT_CMAP, scale: Scale = Scale()) -> Image.Image:
    """Return the indexed image of the headline and the text heatmap, wrapped, in Pillow's bitmap font; token
    colours are the colormap at the nearest of LEVELS values."""
    canvas = _canvas(ex, cmap, scale)
    img = Image.fromarray(canvas.repeat(PNG_SCALE, axis=0).repeat(PNG_SCALE, axis=1), "P")
    img.putpalette(palette(cmap).ravel().tolist())
    return img


#: zlib level of the text PNGs: 1 encodes in under half the time of the default 6, for files of a few KB.
PNG_COMPRESSION = 1


def png_bytes(ex: TextExplanation, cmap: str = DEFAULT_CMAP, scale: Scale = Scale()) -> bytes:
    """Return the PNG file of png_image (the same pixels and palette), encoded here: each scanline is written
    twice (the PNG_SCALE), the copy with PNG's "up" filter, all zeros, which zlib passes over fast; one
    compression pass, without Pillow's per-image overhead (a third of a short review's PNG time)."""
    canvas = _canvas(ex, cmap, scale)
    height, width = canvas.shape[0] * PNG_SCALE, canvas.shape[1] * PNG_SCALE
    rows = np.zeros((canvas.shape[0], PNG_SCALE, 1 + width), np.uint8)  # filter byte, then the pixels
    rows[:, 0, 1:] = canvas.repeat(PNG_SCALE, axis=1)
    rows[:, 1:, 0] = 2  # "up": each byte minus the one above, 0 on a repeated row
    header = struct.pack(">IIBBBBB", width, height, 8, 3, 0, 0, 0)  # 8-bit palette indices, no interlace
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"PLTE", palette(cmap).tobytes())
            + _chunk(b"IDAT", zlib.compress(rows.tobytes(), PNG_COMPRESSION)) + _chunk(b"IEND", b""))


def _chunk(kind: bytes, data: bytes) -> bytes:
    """Return a PNG chunk: length, type, data, CRC-32 of type and data."""
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(data, zlib.crc32(kind)))


FORMATS = ("json", "html", "png")


def json_bytes(doc: dict) -> bytes:
    """Return the UTF-8 JSON of a text document: a key a line, and a line per element of its lists of objects
    (tokens, top features, steps), written by json's C encoder (the indented encoder is pure Python, and several
    times slower than explaining a short text); NaN and Inf as null, as outputs.json_bytes writes them."""
    try:
        lines = [f"  {_JSON.encode(key)}: {_json_value(value)}" for key, value in doc.items()]
    except ValueError:  # a NaN or Inf somewhere: the general writer replaces them
        return outputs.json_bytes(doc)
    return ("{\n" + ",\n".join(lines) + "\n}\n").encode("utf-8")


_JSON = json.JSONEncoder(allow_nan=False)  # one encoder: json.dumps with options builds one per call


def _json_value(value) -> str:
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        return "[\n" + ",\n".join("    " + _JSON.encode(v) for v in value) + "\n  ]"
    return _JSON.encode(value)


def output_paths(out_dir: Path, stem: str, formats=FORMATS) -> dict[str, Path]:
    """Return the paths of one text's outputs: STEM.json, STEM.html, STEM.png (those of `formats`)."""
    return {f: out_dir / f"{stem}.{f}" for f in FORMATS if f in formats}


def write_outputs(ex: TextExplanation, out_dir, stem: str, cmap: str = DEFAULT_CMAP,
                  scale: Scale = Scale(), formats=FORMATS, save_raw: bool = False) -> dict:
    """Write STEM.json and, among `formats`, STEM.html and STEM.png (with `save_raw` also STEM.relevance.npy, the
    tokens' relevance as float32 in the order of the JSON's tokens), all or none (outputs.write_all); return the
    JSON document."""
    paths = output_paths(Path(out_dir), stem, set(formats) | {"json"})
    if save_raw:
        paths["raw"] = Path(out_dir) / f"{stem}.relevance.npy"
    doc = to_json(ex, {k: str(p) for k, p in paths.items()})
    contents = {paths["json"]: json_bytes(doc)}
    if "html" in paths:
        contents[paths["html"]] = html_page(ex, cmap, scale).encode("utf-8")
    if "png" in paths:
        contents[paths["png"]] = png_bytes(ex, cmap, scale)
    if save_raw:
        contents[paths["raw"]] = outputs.npy_bytes(np.asarray(ex.relevance, dtype=np.float32))
    outputs.write_all(contents)
    return doc
