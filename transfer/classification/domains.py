"""Offline target domains, built deterministically from data that installed packages ship.

Nothing downloads: each domain is written once into the project cache
(``$RINGNCE_CACHE/classification/<name>-v<version>/<class>/<image>.png``) by a builder that
reads only files a package installed, in a temporary folder renamed into place.

- ``glyphs`` (Omniglot-like characters): the capital letters of four alphabets (Greek,
  Cyrillic, Armenian, Georgian; 127 characters) rendered from the TrueType fonts matplotlib ships
  (DejaVu, STIX, Computer Modern), 20 instances per character as Omniglot has 20 drawers: each
  instance is one font with its own stroke weight, rotation, scale, shear and shift, dark ink on
  white, 28 x 28.
- ``digits``: scikit-learn's ``load_digits``, 1,797 real handwritten digits (UCI optdigits test
  set, 8 x 8, 17 grey levels; ten classes of about 180), bright ink on black.
"""

import glob
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from transfer.classification.errors import ClassificationError
from transfer.fixtures import build_atomically, cache_dir

GLYPH_SEED = 2021
GLYPH_INSTANCES = 20
GLYPH_SIZE = 28
CANVAS = 64
ALPHABETS = {
    "greek": [c for c in range(0x0391, 0x03AA) if c != 0x03A2],  # 0x03A2 is unassigned
    "cyrillic": list(range(0x0410, 0x0430)),
    "armenian": list(range(0x0531, 0x0557)),
    "georgian": list(range(0x10D0, 0x10F1)),
}
# fallback glyph boxes and size variants of symbols, not typefaces of letters
EXCLUDED_FONTS = ("LastResort", "STIXNonUni", "STIXSiz", "cmex10", "cmsy10")
SETUP_HINT = "install the project's requirements (bash tools/setup_env.sh)"


@dataclass(frozen=True)
class Domain:
    name: str
    version: int
    build: object  # writes the class folders into the given (temporary) folder
    split: dict  # default split rule: the domains have no split folders
    source: str


def matplotlib_fonts():
    import matplotlib

    folder = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
    paths = sorted(glob.glob(str(folder / "*.ttf")))
    return [Path(p) for p in paths if not Path(p).name.startswith(EXCLUDED_FONTS)]


def render_glyph(font, character, generator):
    """One instance: the glyph centred on a white canvas, its stroke thickened or thinned,
    then rotated, scaled, sheared and shifted, and shrunk to GLYPH_SIZE."""
    canvas = Image.new("L", (CANVAS, CANVAS), 255)
    left, top, right, bottom = font.getbbox(character)
    origin = ((CANVAS - (right - left)) / 2 - left, (CANVAS - (bottom - top)) / 2 - top)
    ImageDraw.Draw(canvas).text(origin, character, font=font, fill=0)
    stroke = generator.integers(3)
    if stroke == 1:
        canvas = canvas.filter(ImageFilter.MinFilter(3))  # dark ink spreads: a heavier pen
    elif stroke == 2:
        canvas = canvas.filter(ImageFilter.MaxFilter(3))
    angle = np.deg2rad(generator.uniform(-12, 12))
    scale = generator.uniform(0.8, 1.05)
    shear = generator.uniform(-0.2, 0.2)
    shift = generator.uniform(-3, 3, size=2)
    cos, sin = np.cos(angle) / scale, np.sin(angle) / scale
    # output pixel (x, y) reads input (a x + b y + c, d x + e y + f), about the centre
    a, b, d, e = cos, sin + shear, -sin, cos
    centre = CANVAS / 2
    c = centre - a * (centre + shift[0]) - b * (centre + shift[1])
    f = centre - d * (centre + shift[0]) - e * (centre + shift[1])
    warped = canvas.transform(
        canvas.size,
        Image.Transform.AFFINE,
        (a, b, c, d, e, f),
        Image.Resampling.BILINEAR,
        fillcolor=255,
    )
    return warped.resize((GLYPH_SIZE, GLYPH_SIZE), Image.Resampling.LANCZOS)


def typefaces():
    """``[(font, codepoints it maps)]``: a font lacking a character would draw its .notdef box."""
    from matplotlib.ft2font import FT2Font

    return [
        (ImageFont.truetype(str(path), 40), set(FT2Font(str(path)).get_charmap()))
        for path in matplotlib_fonts()
    ]


def write_glyphs(folder):
    faces = typefaces()
    if not faces:
        raise ClassificationError(f"matplotlib ships no TrueType fonts here: {SETUP_HINT}")
    for alphabet, codepoints in ALPHABETS.items():
        for codepoint in codepoints:
            character = chr(codepoint)
            covering = [font for font, charmap in faces if codepoint in charmap]
            if len(covering) < 4:  # too few typefaces for instances that differ in more than noise
                continue
            class_folder = folder / f"{alphabet}_{codepoint:04X}"
            class_folder.mkdir()
            generator = np.random.default_rng([GLYPH_SEED, codepoint])
            for instance in range(GLYPH_INSTANCES):
                image = render_glyph(covering[instance % len(covering)], character, generator)
                image.save(class_folder / f"{instance:02d}.png")


def write_digits(folder):
    try:
        from sklearn.datasets import load_digits
    except ModuleNotFoundError as error:
        raise ClassificationError(f"the digits domain needs scikit-learn: {SETUP_HINT}") from error
    digits = load_digits()
    pixels = np.rint(digits.images * (255 / 16)).astype(np.uint8)  # 17 grey levels, 0..16
    for label in range(10):
        (folder / str(label)).mkdir()
    for index, (image, label) in enumerate(zip(pixels, digits.target)):
        Image.fromarray(image, mode="L").save(folder / str(label) / f"{index:04d}.png")


DOMAINS = {
    "glyphs": Domain(
        "glyphs",
        1,
        write_glyphs,
        {"train": 0.5, "val": 0.2, "test": 0.3},
        "capitals of Greek, Cyrillic, Armenian and Georgian from matplotlib's fonts",
    ),
    "digits": Domain(
        "digits",
        1,
        write_digits,
        {"train": 0.5, "val": 0.2, "test": 0.3},
        "scikit-learn's load_digits (UCI optdigits), real handwriting",
    ),
}


def domain_folder(name):
    domain = DOMAINS[name]
    return cache_dir() / "classification" / f"{domain.name}-v{domain.version}"


def build(name):
    """The domain's folder, built on first use (a concurrent builder's result is kept)."""
    return build_atomically(domain_folder(name), DOMAINS[name].build)
