"""Reading images: every failure names the file.

``Reader`` holds the rules every image and mask is read by (docs/your-data.md):

* ``exif``: apply the EXIF orientation tag, so that a photo is read upright, as it
  is displayed (the convention of OpenCV's ``imread`` and of
  ``PIL.ImageOps.exif_transpose``); False reads the pixels as stored;
* ``max_image_pixels``: Pillow's decompression-bomb limit (None: Pillow's own,
  ``PIL.Image.MAX_IMAGE_PIXELS``): an image above it is read with a warning, one
  above twice it is refused, as Pillow does, but each time in one line naming the
  file and the setting (``--max-image-pixels``) that changes the limit.
"""
from __future__ import annotations

import contextlib
import io
import re
import warnings
from dataclasses import dataclass

from PIL import Image, ImageOps

from .folders import printable

ORIENTATION_TAG = 0x0112
# What each EXIF orientation does to the stored pixels to show them upright, as
# "{verb} the stored pixels {how}" (5-8 swap width and height).
ORIENTATIONS = {2: ("mirrors", "left to right"), 3: ("turns", "by 180 degrees"), 4: ("flips", "upside down"),
                5: ("transposes", "about the main diagonal"), 6: ("rotates", "by 90 degrees clockwise"),
                7: ("transverses", "about the other diagonal"), 8: ("rotates", "by 90 degrees anticlockwise")}
_BUFFER = re.compile(r"\s*<_io\.BytesIO object at 0x[0-9a-fA-F]+>")


@contextlib.contextmanager
def _own_bomb_check():
    """Pillow's bomb check off: ours (the same rule, with the file's name) replaces it.
    Pillow reads the limit from a module global; a DataLoader worker is a process
    of its own, so no other thread decodes meanwhile."""
    saved = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        yield saved
    finally:
        Image.MAX_IMAGE_PIXELS = saved


def _say(message: str) -> None:
    from dge_explain.console import say

    say(message)


@dataclass(frozen=True)
class Reader:
    exif: bool = True
    max_image_pixels: int | None = None

    def __post_init__(self):
        if not isinstance(self.exif, bool):
            raise ValueError(f"exif must be True or False, got {self.exif!r}")
        if self.max_image_pixels is not None and (isinstance(self.max_image_pixels, bool) or
                                                  not isinstance(self.max_image_pixels, int) or
                                                  self.max_image_pixels < 1):
            raise ValueError(f"max_image_pixels must be a positive integer (or None for Pillow's "
                             f"default), got {self.max_image_pixels!r}")

    def _size_refusal(self, image: Image.Image, path, what: str, default: int | None) -> str | None:
        """Pillow's rule with the file's name: above the limit a warning, above twice it
        a refusal (returned, so that the caller raises it unwrapped)."""
        limit = default if self.max_image_pixels is None else self.max_image_pixels
        pixels = image.width * image.height
        if limit is None or pixels <= limit:
            return None
        size = f"{pixels} pixels ({image.width}x{image.height})"
        if pixels > 2 * limit:
            return (f"{what} {printable(path)} is too large to decode safely: {size}, more than twice the "
                    f"limit of {limit} (a possible decompression bomb); if the file is trusted, rerun with "
                    f"--max-image-pixels {pixels} (or more)")
        _say(f"warning: {what} {printable(path)} has {size}, more than the limit of {limit} (a possible "
             f"decompression bomb): read anyway; --max-image-pixels {pixels} (or more) accepts it silently")
        return None

    def decode(self, data: bytes, path, what: str = "image") -> tuple[Image.Image, int]:
        """(the decoded image, upright if `exif`; the file's EXIF orientation, 1 if none).
        Any decoding failure becomes a ValueError naming the file; Pillow's warnings
        are printed one line each, naming it."""
        try:
            with warnings.catch_warnings(record=True) as caught, _own_bomb_check() as default:
                warnings.simplefilter("always")
                image = Image.open(io.BytesIO(data))
                refusal = self._size_refusal(image, path, what, default)
                if refusal is None:
                    image.load()
                    orientation = image.getexif().get(ORIENTATION_TAG, 1)
                    if self.exif and orientation in ORIENTATIONS:
                        image = ImageOps.exif_transpose(image)
        except Image.UnidentifiedImageError:
            raise ValueError(f"cannot read {what} {printable(path)}: not a readable image (no image format "
                             f"that Pillow knows matches its {len(data)} bytes)") from None
        except (OSError, ValueError, SyntaxError, EOFError) as error:
            raise ValueError(f"cannot read {what} {printable(path)}: {_BUFFER.sub('', str(error))}") from None
        if refusal is not None:
            raise ValueError(refusal)
        for warning in caught:
            _say(f"warning: {what} {printable(path)}: {_BUFFER.sub('', str(warning.message))}")
        return image, orientation

    def open(self, data: bytes, path, what: str = "image") -> Image.Image:
        return self.decode(data, path, what)[0]

    def read(self, path, what: str = "image") -> Image.Image:
        try:
            with open(path, "rb") as handle:
                data = handle.read()
        except OSError as error:
            raise ValueError(f"cannot read {what} {printable(path)}: {error.strerror}") from None
        return self.open(data, path, what)

    def rgb(self, path) -> Image.Image:
        """An image file as RGB, upright unless `exif` is off."""
        return self.read(path).convert("RGB")


DEFAULT = Reader()


def open_image(data: bytes, path) -> Image.Image:
    """Decode image bytes read from `path` by the default rules (EXIF applied)."""
    return DEFAULT.open(data, path)


def read_image(path) -> Image.Image:
    return DEFAULT.read(path)


def load_rgb(path, reader: Reader = DEFAULT) -> Image.Image:
    """An image file as RGB, upright (its EXIF orientation applied unless `reader`
    says otherwise); a clear error naming the file when it cannot be read."""
    return reader.rgb(path)
