import io
import struct
import time
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from vlm.images import ImageError, load_image


def encode(image: Image.Image, format: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format, **kwargs)
    return buffer.getvalue()


def pixel(image: Image.Image, xy=(0, 0)) -> tuple[int, int, int]:
    assert image.mode == "RGB"
    return image.getpixel(xy)


def close(a, b, tolerance=8) -> bool:
    return all(abs(x - y) <= tolerance for x, y in zip(a, b))


def noise(size=(64, 48)) -> Image.Image:
    return Image.fromarray(np.random.default_rng(0).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def test_sources_of_every_kind_give_the_same_rgb_image(tmp_path):
    image = noise()
    path = tmp_path / "a.png"
    image.save(path)
    expected = np.asarray(image)
    for source in (image, path, str(path), path.read_bytes(), bytearray(path.read_bytes()), expected):
        loaded = load_image(source)
        assert loaded.mode == "RGB" and loaded.size == image.size
        np.testing.assert_array_equal(np.asarray(loaded), expected)


def test_zero_byte_file(tmp_path):
    path = tmp_path / "empty.jpg"
    path.write_bytes(b"")
    with pytest.raises(ImageError, match=r"empty.jpg: empty file \(0 bytes\)"):
        load_image(path)
    with pytest.raises(ImageError, match=r"bytes \(0 bytes\): empty"):
        load_image(b"")


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(ImageError, match="nope.png: cannot read"):
        load_image(tmp_path / "nope.png")
    with pytest.raises(ImageError, match="not a file"):
        load_image(tmp_path)


@pytest.mark.parametrize("format", ["JPEG", "PNG"])
def test_truncated_file(tmp_path, format):
    data = encode(noise((256, 256)), format)
    path = tmp_path / f"cut.{format.lower()}"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError, match=rf"cut.{format.lower()}: cannot decode, truncated or corrupt"):
        load_image(path)


def test_not_an_image(tmp_path):
    path = tmp_path / "notes.jpg"
    path.write_text("just some text, not a picture\n")
    with pytest.raises(ImageError, match="notes.jpg: not a supported image"):
        load_image(path)
    with pytest.raises(ImageError, match=r"bytes \(5 bytes\): not a supported image"):
        load_image(b"hello")


def test_formats_outside_the_allow_list_are_refused():
    # EPS would run Ghostscript; it is not a format a VLM dataset needs
    with pytest.raises(ImageError, match="not a supported image"):
        load_image(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n")
    with pytest.raises(TypeError, match="not int"):
        load_image(123)


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims width x height grey pixels but holds almost no data: a decompression bomb's header."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\0" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def test_decompression_bomb_is_refused_from_the_header(tmp_path):
    path = tmp_path / "bomb.png"
    path.write_bytes(png_header_only(9000, 9000))  # 81 M pixels: under PIL's own limit, over ours
    start = time.perf_counter()
    with pytest.raises(ImageError, match=r"bomb.png: 9000x9000 = 81,000,000 pixels, over max_pixels=64,000,000"):
        load_image(path)
    assert time.perf_counter() - start < 1.0  # nothing was decoded
    with pytest.raises(ImageError, match=r"bytes \(69 bytes\): .*decompression bomb"):
        load_image(png_header_only(10**6, 10**6))  # over PIL's own cap, which fires first
    with pytest.raises(ImageError, match=r"64x48 = 3,072 pixels, over max_pixels=1,000"):
        load_image(noise(), max_pixels=1000)
    with pytest.raises(ImageError, match="over max_pixels"):
        load_image(np.zeros((100, 100), np.uint8), max_pixels=1000)


def test_cmyk_jpeg():
    cmyk = Image.new("CMYK", (16, 16), (0, 0, 0, 0))
    cmyk.paste((0, 0, 0, 255), (0, 0, 8, 16))
    loaded = load_image(encode(cmyk, "JPEG", quality=95))
    assert close(pixel(loaded, (12, 8)), (255, 255, 255)) and close(pixel(loaded, (2, 8)), (0, 0, 0))


def test_16_bit_grey_png_is_rescaled_not_clipped():
    image = Image.fromarray(np.array([[0, 32768, 65535]], dtype=np.uint16))
    loaded = load_image(encode(image, "PNG"))
    assert [pixel(loaded, (x, 0)) for x in range(3)] == [(0, 0, 0), (128, 128, 128), (255, 255, 255)]
    # mode "I" (32-bit ints, how PIL holds 16-bit TIFF) gets the same scale
    loaded = load_image(Image.fromarray(np.array([[0, 32768, 65535]], dtype=np.int32)))
    assert pixel(loaded, (1, 0)) == (128, 128, 128)


def test_palette_with_transparency_is_composited_on_white():
    image = Image.new("P", (4, 4), 0)
    image.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)  # index 0 black, index 1 red
    image.putpixel((3, 3), 1)
    loaded = load_image(encode(image, "PNG", transparency=0))
    assert pixel(loaded, (0, 0)) == (255, 255, 255) and pixel(loaded, (3, 3)) == (255, 0, 0)


def test_alpha_is_composited_on_white():
    image = Image.new("RGBA", (3, 1))
    image.putdata([(0, 0, 0, 0), (255, 0, 0, 255), (0, 0, 0, 128)])
    loaded = load_image(encode(image, "PNG"))
    assert pixel(loaded, (0, 0)) == (255, 255, 255) and pixel(loaded, (1, 0)) == (255, 0, 0)
    assert close(pixel(loaded, (2, 0)), (127, 127, 127), tolerance=1)
    grey_alpha = Image.new("LA", (1, 1), (0, 0))
    assert pixel(load_image(grey_alpha)) == (255, 255, 255)


def test_animated_gif_gives_the_first_frame():
    frames = [Image.new("RGB", (8, 8), colour) for colour in ((255, 0, 0), (0, 0, 255))]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    assert Image.open(io.BytesIO(data)).n_frames == 2
    assert close(pixel(load_image(data)), (255, 0, 0))


def test_exif_orientation_is_applied():
    image = Image.new("RGB", (40, 20), (0, 0, 255))
    image.paste((255, 0, 0), (0, 0, 20, 20))  # left half red
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: display rotated 90 degrees clockwise
    loaded = load_image(encode(image, "JPEG", exif=exif, quality=95))
    assert loaded.size == (20, 40)
    assert close(pixel(loaded, (10, 5)), (255, 0, 0), 30) and close(pixel(loaded, (10, 35)), (0, 0, 255), 30)


def test_grayscale_and_bilevel():
    assert pixel(load_image(encode(Image.new("L", (2, 2), 77), "PNG"))) == (77, 77, 77)
    assert pixel(load_image(Image.new("1", (2, 2), 1))) == (255, 255, 255)


def test_arrays_of_each_shape_and_dtype():
    grey = np.full((2, 3), 0.5, np.float32)
    assert load_image(grey).size == (3, 2) and pixel(load_image(grey)) == (128, 128, 128)
    assert pixel(load_image(np.full((2, 2, 3), 65535, np.uint16))) == (255, 255, 255)
    assert pixel(load_image(np.full((2, 2, 1), 9, np.uint8))) == (9, 9, 9)
    rgba = np.zeros((2, 2, 4), np.uint8)  # fully transparent black
    assert pixel(load_image(rgba)) == (255, 255, 255)


@pytest.mark.parametrize(
    "array, problem",
    [
        (np.zeros((3, 8, 8), np.uint8), r"expected shape HxW, HxWx3 or HxWx4 \(channels first"),
        (np.zeros((8, 8, 2), np.uint8), "expected shape HxW, HxWx3 or HxWx4"),
        (np.zeros((0, 8), np.uint8), r"has no pixels \(8x0\)"),
        (np.full((2, 2), 2.0), r"float values must lie in \[0, 1\], found \[2, 2\]"),
        (np.full((2, 2), np.nan), r"float values must lie in \[0, 1\]"),
        (np.zeros((2, 2), np.int64), "unsupported dtype int64"),
    ],
)
def test_bad_arrays_are_named(array, problem):
    with pytest.raises(ImageError, match=rf"array \({', '.join(map(str, array.shape))},?\) \S+: {problem}"):
        load_image(array)


VALID = [
    encode(noise((16, 16)), "PNG"),
    encode(noise((16, 16)), "JPEG"),
    encode(noise((16, 16)).convert("P"), "GIF"),
    encode(noise((16, 16)), "WEBP"),
    encode(noise((16, 16)), "TIFF"),
    encode(noise((16, 16)), "BMP"),
]


@st.composite
def mangled_images(draw) -> bytes:
    data = bytearray(draw(st.sampled_from(VALID)))
    for _ in range(draw(st.integers(0, 8))):
        data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    return bytes(data[: draw(st.integers(0, len(data)))])


@pytest.mark.filterwarnings("ignore::UserWarning")  # PIL warns about some corrupt files it still reads
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.binary(max_size=512), mangled_images()))
def test_any_bytes_give_an_rgb_image_or_image_error(data):
    try:
        image = load_image(data, max_pixels=1_000_000)
    except ImageError:
        return
    assert image.mode == "RGB" and image.width * image.height > 0
