"""Draw the offline classification domains for the README: ``python
tools/classification_domains_picture.py [OUT.png]`` (default docs/classification_domains.png).

Ten glyph characters (every 11th of the 127) with their 20 instances, then two rows of digits.
"""

import sys
from pathlib import Path

from PIL import Image

from pretrain.atomic_write import atomic_write
from pretrain.errors import one_line_errors
from transfer.classification import domains
from transfer.classification.image_folder import scan

CELL, COLUMNS = 28, 20


@one_line_errors
def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    out = Path(argv[0] if argv else "docs/classification_domains.png")
    glyphs, digits = scan(domains.build("glyphs")), scan(domains.build("digits"))
    rows = [
        [p for p, label in zip(glyphs.paths, glyphs.labels) if label == c]
        for c in range(0, 110, 11)
    ]
    by_digit = [
        [p for p, label in zip(digits.paths, digits.labels) if label == d] for d in range(10)
    ]
    rows += [[by_digit[i % 10][row * 3] for i in range(COLUMNS)] for row in range(2)]
    sheet = Image.new("L", (CELL * COLUMNS + 10, CELL * len(rows)), 128)
    for row, paths in enumerate(rows):
        for column, path in enumerate(paths[:COLUMNS]):
            with Image.open(path) as image:
                sheet.paste(image.convert("L").resize((CELL, CELL)), (column * CELL, row * CELL))
    sheet = sheet.resize((sheet.width * 2, sheet.height * 2))
    atomic_write(out, lambda handle: sheet.save(handle, format="png"), binary=True)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
