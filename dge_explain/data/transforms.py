"""Reading images: every failure names the file."""
from __future__ import annotations

import io
import warnings

from PIL import Image


def open_image(data: bytes, path) -> Image.Image:
    """Decode image bytes read from `path`; any decoding error, Pillow's
    decompression-bomb error included, becomes a ValueError naming the file."""
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            image = Image.open(io.BytesIO(data))
            image.load()
        for warning in caught:
            warnings.warn(f"image {path}: {warning.message}", warning.category, stacklevel=3)
        return image
    except Image.DecompressionBombError as error:
        raise ValueError(f"image {path} is too large to decode safely ({error}); raise "
                         "PIL.Image.MAX_IMAGE_PIXELS if the file is trusted") from None
    except (OSError, ValueError, SyntaxError) as error:
        raise ValueError(f"cannot read image {path}: {error}") from None


def read_image(path) -> Image.Image:
    try:
        data = open(path, "rb").read()
    except OSError as error:
        raise ValueError(f"cannot read image {path}: {error}") from None
    return open_image(data, path)


def load_rgb(path) -> Image.Image:
    """An image file as RGB; a clear error naming the file when it cannot be read."""
    return read_image(path).convert("RGB")
