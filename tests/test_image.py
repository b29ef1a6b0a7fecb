"""Decoding parity with ``PIL.Image.open(p).convert("RGB")`` and the bad-input policy."""

from __future__ import annotations

import io
import os
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image, ImageOps

from simx.core.errors import SimxError
from simx.images.decode import IMAGE_EXTENSIONS, MAX_PIXELS, ImageError, find_images, load_rgb


def pil_rgb(path: Path) -> np.ndarray:
    """The reference decode."""
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def _diff(a: np.ndarray, b: np.ndarray) -> tuple[float, int]:
    d = np.abs(a.astype(np.int16) - b.astype(np.int16))
    return float(d.mean()), int(d.max())


def test_contract():
    assert MAX_PIXELS == 89_478_485
    assert issubclass(ImageError, SimxError)
    assert {".jpg", ".jpeg", ".png"} <= IMAGE_EXTENSIONS


# -- parity ------------------------------------------------------------------------------

def test_photos_decode_like_pil(photo_dir):
    """OpenCV's JPEG and PNG decodes equal Pillow's, pixel for pixel, on every photo."""
    files = sorted(photo_dir.iterdir())
    assert len(files) >= 8
    for p in files:
        got, ref = load_rgb(p), pil_rgb(p)
        assert got.dtype == np.uint8 and got.ndim == 3 and got.shape[2] == 3
        assert got.flags.c_contiguous
        mean, worst = _diff(got, ref)
        assert np.array_equal(got, ref), (p.name, mean, worst)


@pytest.mark.parametrize("opts", [
    {"quality": 95},
    {"quality": 75, "subsampling": 0},  # 4:4:4
    {"quality": 85, "subsampling": 1},  # 4:2:2
    {"quality": 60, "subsampling": 2},  # 4:2:0
    {"quality": 90, "progressive": True},
    {"quality": 90, "optimize": True},
])
def test_jpeg_variants_decode_like_pil(tmp_path, photos, opts):
    # Odd sizes exercise the chroma upsampling at the edges.
    for name in ("chelsea", "rocket", "camera"):
        p = tmp_path / f"{name}.jpg"
        Image.fromarray(photos[name][:299, :451]).save(p, **opts)
        assert np.array_equal(load_rgb(p), pil_rgb(p)), (name, opts)


def test_multi_picture_jpeg_reads_the_first_frame(tmp_path, photos):
    """Phones write JPEGs with an MPF block, which Pillow opens as MPO: frame 0 is the photo."""
    p = tmp_path / "phone.jpg"
    Image.fromarray(photos["coffee"]).save(p, "MPO", save_all=True, quality=90,
                                           append_images=[Image.fromarray(photos["rocket"])])
    with Image.open(p) as im:
        assert im.format == "MPO"
    assert np.array_equal(load_rgb(p), pil_rgb(p))


def _mode_images(a: np.ndarray) -> dict[str, Image.Image]:
    im = Image.fromarray(a)
    rgba = np.array(im.convert("RGBA"))
    rgba[..., 3] = (np.arange(a.shape[1]) * 7) % 256  # alpha varies: dropping != compositing
    pal = im.convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
    return {
        "rgb.png": im,
        "rgba.png": Image.fromarray(rgba),
        "l.png": im.convert("L"),
        "la.png": Image.fromarray(rgba).convert("LA"),
        "1.png": im.convert("1"),
        "p.png": pal,
        "p_trns.png": pal,  # saved with a transparent palette entry
        "l.jpg": im.convert("L"),
        "cmyk.jpg": im.convert("CMYK"),
        "p.gif": pal,
        "rgb.bmp": im,
        "rgb.tif": im,
        "rgb.webp": im,
    }


def test_modes_decode_like_pil_convert(tmp_path, photos):
    """Grey, grey+alpha, RGBA (alpha dropped), palette (with transparency), 1-bit, CMYK,
    and the formats Pillow decodes itself (GIF, BMP, TIFF, WebP)."""
    for name, im in _mode_images(photos["coffee"][:200, :301]).items():
        p = tmp_path / name
        if name == "p_trns.png":
            im.save(p, transparency=3)
        else:
            im.save(p)
        assert np.array_equal(load_rgb(p), pil_rgb(p)), name


def test_16_bit_images_keep_their_high_byte(tmp_path, photos):
    """16-bit colour PNG: v >> 8, which is exactly Pillow's result. 16-bit grey: v >> 8 too,
    where Pillow's convert("RGB") clips to 255 (documented deviation, see simx.images.decode)."""
    rgb = photos["coffee"][:100, :150]
    low = ((np.arange(150) * 7) % 256).astype(np.uint16)[None, :, None]  # must not matter
    rgb16 = rgb.astype(np.uint16) * 256 + low
    p = tmp_path / "rgb16.png"
    cv2.imwrite(str(p), np.ascontiguousarray(rgb16[:, :, ::-1]))
    assert np.array_equal(load_rgb(p), pil_rgb(p))
    assert np.array_equal(load_rgb(p), rgb)

    grey = np.asarray(Image.fromarray(rgb).convert("L"))
    p = tmp_path / "grey16.png"
    cv2.imwrite(str(p), grey.astype(np.uint16) * 257)
    with Image.open(p) as im:
        assert im.mode.startswith("I")
    assert np.array_equal(load_rgb(p), np.repeat(grey[:, :, None], 3, axis=2))
    assert not np.array_equal(load_rgb(p), pil_rgb(p))  # Pillow clips: the deviation is real


def _with_orientation(src: np.ndarray, path: Path, orientation: int) -> None:
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(src).save(path, quality=92, exif=exif)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_ignored_by_default_and_applied_on_request(tmp_path, photos,
                                                                    orientation):
    p = tmp_path / f"o{orientation}.jpg"
    _with_orientation(photos["chelsea"][:120, :200], p, orientation)
    assert np.array_equal(load_rgb(p), pil_rgb(p))  # Image.open does not rotate
    with Image.open(p) as im:
        ref = np.asarray(ImageOps.exif_transpose(im).convert("RGB"))
    got = load_rgb(p, exif_transpose=True)
    assert got.flags.c_contiguous
    assert np.array_equal(got, ref), orientation


def test_unicode_path(tmp_path, photos):
    p = tmp_path / "фото été 写真.jpg"
    Image.fromarray(photos["astronaut"]).save(p, quality=90)
    assert np.array_equal(load_rgb(p), pil_rgb(p))
    assert np.array_equal(load_rgb(str(p)), pil_rgb(p))


# -- bad input ---------------------------------------------------------------------------

@pytest.fixture()
def good_jpeg(tmp_path, photos) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(photos["astronaut"]).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def _fails(path: Path, pattern: str, **kw) -> str:
    with pytest.raises(ImageError, match=pattern) as ei:
        load_rgb(path, **kw)
    msg = str(ei.value)
    assert "\n" not in msg and msg
    return msg


def test_empty_file(tmp_path):
    p = tmp_path / "empty.jpg"
    p.write_bytes(b"")
    _fails(p, "empty file")


@pytest.mark.parametrize("keep", [0.5, 0.9, -1, -2])
def test_truncated_jpeg_fails_like_pil(tmp_path, good_jpeg, keep):
    cut = int(len(good_jpeg) * keep) if keep > 0 else len(good_jpeg) + keep
    p = tmp_path / "cut.jpg"
    p.write_bytes(good_jpeg[:cut])
    with pytest.raises(OSError):  # the reference fails too
        pil_rgb(p)
    _fails(p, "truncated")


def test_truncated_png(tmp_path, photos):
    p = tmp_path / "cut.png"
    buf = io.BytesIO()
    Image.fromarray(photos["coffee"]).save(buf, "PNG")
    p.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    _fails(p, "truncated|corrupt")


def test_trailing_bytes_after_jpeg_are_fine(tmp_path, good_jpeg):
    p = tmp_path / "trailer.jpg"
    p.write_bytes(good_jpeg + b"\0" * 100 + b"vendor trailer")
    assert np.array_equal(load_rgb(p), pil_rgb(p))


def test_text_saved_as_jpg(tmp_path):
    p = tmp_path / "notes.jpg"
    p.write_text("this is not an image\n" * 20)
    _fails(p, "not an image")


def test_directory_missing_and_broken_symlink(tmp_path):
    _fails(tmp_path, "directory")
    _fails(tmp_path / "nope.jpg", "not found")
    link = tmp_path / "dangling.jpg"
    link.symlink_to(tmp_path / "gone.jpg")
    _fails(link, "broken symbolic link")


def test_unreadable_file(tmp_path, good_jpeg, monkeypatch):
    p = tmp_path / "secret.jpg"
    p.write_bytes(good_jpeg)
    p.chmod(0)
    try:
        if os.access(p, os.R_OK):  # root ignores permissions: make open() refuse instead
            def refuse(*args, **kwargs):
                raise PermissionError(13, "Permission denied")
            monkeypatch.setattr("simx.images.decode.open", refuse, raising=False)
        _fails(p, "permission denied")
    finally:
        p.chmod(0o644)


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares a size but holds (almost) no pixel data: a bomb's header."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
            + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


def test_decompression_bombs_refused_from_the_header(tmp_path):
    p = tmp_path / "bomb.png"
    p.write_bytes(_png_header_only(12_000, 10_000))  # 120 Mpx: over the limit, under 2x
    msg = _fails(p, "over the limit")
    assert msg == f"image has 120000000 pixels, over the limit of {MAX_PIXELS}"
    p.write_bytes(_png_header_only(20_000, 20_000))  # 400 Mpx: Pillow itself refuses to open
    _fails(p, "400000000 pixels, over the limit")
    # Lifting the limit gets past the header; this file then fails as the corrupt PNG it is.
    msg = _fails(p, "truncated|corrupt|broken", max_pixels=None)
    assert "limit" not in msg


def test_pixel_limit_is_a_parameter(tmp_path, good_jpeg):
    p = tmp_path / "ok.jpg"
    p.write_bytes(good_jpeg)
    _fails(p, "image has 262144 pixels, over the limit of 1000", max_pixels=1000)
    assert load_rgb(p, max_pixels=512 * 512).shape == (512, 512, 3)


# -- finding files -----------------------------------------------------------------------

def test_find_images(tmp_path, good_jpeg):
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / ".hidden").mkdir()
    files = ["a/1.jpg", "a/b/2.PNG", "a/b/3.webp", "z.jpeg", ".hidden/x.jpg", "a/.dot.jpg",
             "a/readme.txt", "a/b/data.npy"]
    for f in files:
        (tmp_path / f).write_bytes(good_jpeg)
    (tmp_path / "a" / "dangling.jpg").symlink_to(tmp_path / "missing.jpg")
    odd = tmp_path / "a" / "readme.txt"

    found = find_images([tmp_path, odd, tmp_path / "a" / "1.jpg", tmp_path / "a"])
    names = [p.relative_to(tmp_path).as_posix() for p in found]
    assert names == sorted(names)
    assert names == ["a/1.jpg", "a/b/2.PNG", "a/b/3.webp", "a/dangling.jpg", "a/readme.txt",
                     "z.jpeg"]
    # Directly named paths are kept even when they are missing: the caller reports them.
    assert find_images([tmp_path / "nope.jpg"]) == [tmp_path / "nope.jpg"]
