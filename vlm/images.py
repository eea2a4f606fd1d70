"""Load any image a user or a dataset hands us as a plain RGB PIL image, or fail with a clear ImageError.

Every problem with the data itself (missing, empty, truncated, not an image, too many pixels, an array of
the wrong shape) raises ImageError, a ValueError, so a training loop can catch one type and skip the sample.
"""

import io
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

# Only the formats a photo or screenshot comes in: PIL's other plugins (EPS runs Ghostscript, FITS, GRIB, ...)
# are attack surface with no use here.
Image.init()
FORMATS = tuple(f for f in ("JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF", "AVIF") if f in Image.OPEN)

ImageSource = Image.Image | str | os.PathLike | bytes | bytearray | memoryview | np.ndarray


class ImageError(ValueError):
    """An image that cannot be loaded; the message names the source and the problem."""


def load_image(source: ImageSource, *, max_pixels: int = 64_000_000) -> Image.Image:
    """Return `source` as an RGB image: EXIF orientation applied, first frame, alpha composited on white.

    `max_pixels` caps width * height, checked from the file header before any pixel is decoded, so a
    decompression bomb costs nothing. PIL's own cap (2 * PIL.Image.MAX_IMAGE_PIXELS) still applies on top:
    raise that too to allow more than about 179 M pixels.
    """
    if isinstance(source, Image.Image):
        name = f"PIL image ({source.mode}, {source.width}x{source.height})"
        _check_size(name, source.size, max_pixels)
        return _decode(name, source)
    if isinstance(source, np.ndarray):
        return _from_array(f"array {source.shape} {source.dtype}", source, max_pixels)
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        name = f"bytes ({len(data)} bytes)"
        if not data:
            raise ImageError(f"{name}: empty")
        return _open(name, io.BytesIO(data), max_pixels)
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        try:
            size = path.stat().st_size
        except (OSError, ValueError) as e:  # ValueError: a NUL byte in the path
            raise ImageError(f"{path}: cannot read ({getattr(e, 'strerror', None) or e})") from e
        if not path.is_file():
            raise ImageError(f"{path}: not a file")
        if size == 0:
            raise ImageError(f"{path}: empty file (0 bytes)")
        try:
            with open(path, "rb") as f:
                return _open(str(path), f, max_pixels)
        except OSError as e:  # permissions, I/O errors: PIL's own OSErrors are already ImageErrors
            raise ImageError(f"{path}: cannot read ({e.strerror or e})") from e
    raise TypeError(f"load_image takes a PIL image, path, bytes or numpy array, not {type(source).__name__}")


def _open(name: str, fp, max_pixels: int) -> Image.Image:
    try:
        image = Image.open(fp, formats=FORMATS)  # reads the header only
    except Image.DecompressionBombError as e:  # PIL's own cap, when max_pixels is set above it
        raise ImageError(f"{name}: {e}") from e
    except Exception as e:  # UnidentifiedImageError, or a plugin choking on a mangled header
        raise ImageError(f"{name}: not a supported image ({', '.join(FORMATS)})") from e
    with image:
        _check_size(name, image.size, max_pixels)
        return _decode(name, image)


def _check_size(name: str, size: tuple[int, int], max_pixels: int) -> None:
    width, height = size
    if width <= 0 or height <= 0:
        raise ImageError(f"{name}: has no pixels ({width}x{height})")
    if width * height > max_pixels:
        raise ImageError(f"{name}: {width}x{height} = {width * height:,} pixels, over max_pixels={max_pixels:,}")


def _decode(name: str, image: Image.Image) -> Image.Image:
    try:
        image.load()  # an animated image stays on its first frame
        image = ImageOps.exif_transpose(image)
        return _to_rgb(name, image)
    except ImageError:
        raise
    except Exception as e:  # PIL reports corrupt data as OSError, SyntaxError, struct.error, EOFError, ...
        raise ImageError(f"{name}: cannot decode, truncated or corrupt ({type(e).__name__}: {e})") from e


def _to_rgb(name: str, image: Image.Image) -> Image.Image:
    # convert("RGB") would clip 16-bit values at 255: go through the array path, which rescales.
    # Mode "I" is how PIL holds 16-bit PNG and TIFF data, so its values are read as 16-bit too.
    if image.mode in ("I", "I;16", "I;16L", "I;16B", "I;16N"):
        array = np.clip(np.asarray(image), 0, 65535).astype(np.uint16)
        return _from_array(name, array, max_pixels=image.width * image.height)
    if image.mode == "F":
        return _from_array(name, np.asarray(image), max_pixels=image.width * image.height)
    # a palette may carry a transparent index, and "transparency" marks one transparent colour in L or RGB
    if image.mode in ("P", "PA", "RGBA", "LA", "RGBa", "La") or "transparency" in image.info:
        image = image.convert("RGBA")
        white = Image.new("RGBA", image.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, image).convert("RGB")
    return image.convert("RGB")


def _from_array(name: str, array: np.ndarray, max_pixels: int) -> Image.Image:
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[..., 0]
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (3, 4))):
        channels_first = array.ndim == 3 and array.shape[0] in (1, 3, 4)
        hint = " (channels first? use array.transpose(1, 2, 0))" if channels_first else ""
        raise ImageError(f"{name}: expected shape HxW, HxWx3 or HxWx4{hint}")
    _check_size(name, (array.shape[1], array.shape[0]), max_pixels)
    if array.dtype.kind == "u" and array.dtype.itemsize == 1:
        pass
    elif array.dtype.kind == "u" and array.dtype.itemsize == 2:
        array = np.round(array / 257.0).astype(np.uint8)
    elif array.dtype.kind == "f":
        low, high = float(np.min(array)), float(np.max(array))
        if not (0.0 <= low and high <= 1.0):  # also false for NaN
            raise ImageError(f"{name}: float values must lie in [0, 1], found [{low:g}, {high:g}]")
        array = np.round(array * 255).astype(np.uint8)
    else:
        raise ImageError(f"{name}: unsupported dtype {array.dtype} (use uint8, uint16 or float in [0, 1])")
    image = Image.fromarray(np.ascontiguousarray(array))
    return _to_rgb(name, image)
