"""Decoding images the way the torch reference sees them, with OpenCV doing the work.

The reference pipeline opens files with ``PIL.Image.open(p).convert("RGB")``. This module
returns the same HxWx3 uint8 RGB array for the files people have, faster, and turns every
way a file can be bad into an :class:`ImageError` with a one-line reason, so that a run
over a folder records the file and goes on.

Policy, decided here and tested in tests/test_image.py:

- **What decodes where.** JPEG (grey or colour) and PNG go through ``cv2.imdecode``, which
  reproduces Pillow's pixels for them (same libjpeg-turbo IDCT and upsampling; PNG is
  lossless). Anything else Pillow can open (GIF, BMP, TIFF, WebP, CMYK JPEG, ...) is
  decoded by Pillow itself, so it is right by construction.
- **No EXIF rotation by default**, as ``Image.open`` does not rotate; OpenCV's default
  rotation is switched off (``IMREAD_IGNORE_ORIENTATION``). ``exif_transpose=True`` applies
  the orientation tag exactly as ``PIL.ImageOps.exif_transpose`` does.
- **Alpha is dropped, not composited**, as ``convert("RGB")`` drops it; palette images take
  their palette colours and ignore transparency, as ``convert("RGB")`` does.
- **16-bit images are reduced to their high byte** (``v >> 8``). For 16-bit colour PNGs that
  is exactly what Pillow does. For 16-bit grey (Pillow mode ``I;16``) Pillow's
  ``convert("RGB")`` *clips* every value above 255 to white, which destroys the picture;
  simx deliberately keeps the picture instead, so those files differ from the reference.
- **Decompression bombs are refused before the pixels are decoded**: the size comes from
  the header (``Image.open`` is lazy), and anything above ``max_pixels`` fails.
- **Truncated files fail**, as they do in Pillow (``image file is truncated``); OpenCV 5
  returns ``None`` for them, which is turned into the same one-line error.
"""

from __future__ import annotations

import io
import os
import re
import stat
import struct
import threading
import warnings
from collections.abc import Iterable, Iterator
from typing import BinaryIO
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from simx.core.errors import SimxError, first_line

MAX_PIXELS: int = int(Image.MAX_IMAGE_PIXELS or 89_478_485)
"""Default pixel limit: Pillow's decompression-bomb limit (89,478,485 pixels)."""

IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
)
"""Suffixes (lower case) that ``find_images`` picks up when it walks a folder."""

# Formats and Pillow modes that cv2.imdecode reproduces exactly (tests prove each one).
_CV2_MODES = {
    "JPEG": {"RGB", "L"},
    "MPO": {"RGB", "L"},  # phone JPEGs with an MPF block: Pillow and OpenCV read frame 0
    "PNG": {"RGB", "RGBA", "L", "LA", "P", "PA", "1", "I;16", "I;16B", "I"},
}

# Pillow's own bomb check runs inside Image.open with a process-wide limit. Lifting it for
# one call (max_pixels above twice Pillow's limit, or None) is serialized with this lock.
_PIL_LIMIT_LOCK = threading.Lock()

# PIL.ImageOps.exif_transpose's table, as numpy views (orientation tag -> function).
_ORIENT = {
    2: lambda a: a[:, ::-1],  # FLIP_LEFT_RIGHT
    3: lambda a: a[::-1, ::-1],  # ROTATE_180
    4: lambda a: a[::-1],  # FLIP_TOP_BOTTOM
    5: lambda a: a.transpose(1, 0, 2),  # TRANSPOSE
    6: lambda a: np.rot90(a, -1),  # ROTATE_270 (Pillow's angles are counter-clockwise)
    7: lambda a: np.rot90(a, 2).transpose(1, 0, 2),  # TRANSVERSE
    8: lambda a: np.rot90(a, 1),  # ROTATE_90
}


class ImageError(SimxError):
    """A file that cannot be used as an image; the message is one line that says why."""


# What decoders raise for bad files. Anything else (TypeError, AttributeError, ...) is a
# bug in simx or a library and must surface, not be filed as one more bad image.
DECODE_ERRORS: tuple[type[BaseException], ...] = (
    OSError, SyntaxError, ValueError, EOFError, IndexError, KeyError, struct.error,
    ZeroDivisionError, OverflowError, MemoryError, cv2.error)

# Bytes a file may hold beyond what its pixels could need (8 bytes a pixel covers 16-bit
# RGBA), for metadata and thumbnails; more is not an image worth reading into memory.
_SLACK_BYTES = 64 << 20


def _open_file(path: Path) -> BinaryIO:
    """The file opened for reading; every way of not getting it becomes an ImageError."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        if os.path.islink(path):
            raise ImageError("broken symbolic link") from None
        raise ImageError("file not found") from None
    except PermissionError:
        raise ImageError("permission denied") from None
    except OSError as e:
        raise ImageError(f"cannot read file: {e.strerror or e}") from None
    if stat.S_ISDIR(st.st_mode):
        raise ImageError("is a directory, not an image")
    if not stat.S_ISREG(st.st_mode):
        raise ImageError("not a regular file")
    if st.st_size == 0:
        raise ImageError("empty file")
    try:
        return open(path, "rb")
    except PermissionError:
        raise ImageError("permission denied") from None
    except OSError as e:
        raise ImageError(f"cannot read file: {e.strerror or e}") from None


def _read_rest(f: BinaryIO, w: int, h: int) -> bytes:
    """The whole file, once its header said the image is worth it."""
    size = os.fstat(f.fileno()).st_size
    if size > 8 * w * h + _SLACK_BYTES:
        raise ImageError(f"file is {size} bytes, far more than a {w}x{h} image needs")
    try:
        f.seek(0)
        data = f.read()
    except OSError as e:
        raise ImageError(f"cannot read file: {e.strerror or e}") from None
    if not data:
        raise ImageError("empty file")
    return data


def _open_header(src: BinaryIO, max_pixels: int | None) -> Image.Image:
    """Pillow's lazy open: format, mode and size from the header, no pixels decoded (and,
    from a file, only the header's bytes read)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return Image.open(src)
    except Image.DecompressionBombError as e:
        if max_pixels is not None and max_pixels <= int(Image.MAX_IMAGE_PIXELS or 0) * 2:
            # Over Pillow's hard limit (twice its warning limit), hence over ours.
            m = re.search(r"\((\d+) pixels\)", str(e))
            n = m.group(1) if m else "too many"
            raise ImageError(f"image has {n} pixels, over the limit of {max_pixels}") from None
        with _PIL_LIMIT_LOCK:  # the caller asked for a limit above Pillow's: lift it once
            old, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
            try:
                src.seek(0)
                return Image.open(src)
            finally:
                Image.MAX_IMAGE_PIXELS = old
    except UnidentifiedImageError:
        raise ImageError("not an image (unknown or corrupt format)") from None
    except DECODE_ERRORS as e:  # plugins raise SyntaxError, struct.error, ... for bad headers
        raise ImageError(_short(e, "corrupt image header")) from None


def _short(e: BaseException, default: str) -> str:
    return first_line(e, default)


def _to_rgb8(a: np.ndarray) -> np.ndarray:
    """Any decoded array (grey, grey+alpha, RGB, RGBA; 8 or 16 bit) -> HxWx3 uint8 RGB."""
    if a.dtype == np.uint16:
        a = (a >> 8).astype(np.uint8)
    elif a.dtype != np.uint8:  # 32-bit int or float modes: clip like Pillow's convert
        a = np.clip(a, 0, 255).astype(np.uint8)
    if a.ndim == 2:
        a = a[:, :, None]
    c = a.shape[2]
    if c == 1:
        a = np.repeat(a, 3, axis=2)
    elif c == 2:  # grey + alpha: drop alpha
        a = np.repeat(a[:, :, :1], 3, axis=2)
    elif c > 3:  # RGB + alpha (or more): drop alpha
        a = a[:, :, :3]
    return np.ascontiguousarray(a)


def _decode_pil(im: Image.Image) -> np.ndarray:
    """Pillow's own decode, for the formats OpenCV is not trusted to reproduce."""
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        a = np.asarray(im).astype(np.uint16)
        return _to_rgb8(a)  # high byte; Pillow's convert would clip (see module docstring)
    return np.ascontiguousarray(np.asarray(im.convert("RGB")))


# IMREAD_COLOR_RGB arrived in OpenCV 4.11; before it, decode BGR and swap the channels.
_CV2_RGB = getattr(cv2, "IMREAD_COLOR_RGB", None)


def _decode_cv2(data: bytes) -> np.ndarray | None:
    buf = np.frombuffer(data, np.uint8)
    try:
        if _CV2_RGB is not None:
            return cv2.imdecode(buf, _CV2_RGB | cv2.IMREAD_IGNORE_ORIENTATION)
        bgr = cv2.imdecode(buf, cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    except cv2.error as e:
        raise ImageError(_short(e, "OpenCV could not decode the file")) from None
    return None if bgr is None else cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def load_rgb(
    path: str | os.PathLike[str],
    *,
    exif_transpose: bool = False,
    max_pixels: int | None = MAX_PIXELS,
) -> np.ndarray:
    """Decode ``path`` to an HxWx3 uint8 RGB array, C-contiguous, as the reference sees it.

    Raises ImageError (one line) for missing, unreadable, empty, truncated, non-image and
    oversized files; ``max_pixels=None`` lifts the size limit.
    """
    p = Path(path)
    with _open_file(p) as f:
        # The header first, from the file: a huge or bogus file is refused before its body
        # is read into memory.
        w, h = _open_header(f, max_pixels).size
        if max_pixels is not None and w * h > max_pixels:
            raise ImageError(f"image has {w * h} pixels, over the limit of {max_pixels}")
        if w < 1 or h < 1:
            raise ImageError("image has no pixels")
        data = _read_rest(f, w, h)
    im = _open_header(io.BytesIO(data), max_pixels)
    if im.size != (w, h):
        raise ImageError("the file changed while it was read")

    rgb: np.ndarray | None = None
    fmt = im.format or ""
    # A PNG cut short makes libpng print to stderr before OpenCV gives up; such files (no
    # IEND at the end) go to Pillow, which fails them with its own one-line message.
    use_cv2 = im.mode in _CV2_MODES.get(fmt, ()) and (fmt != "PNG" or b"IEND" in data[-64:])
    if use_cv2:
        rgb = _decode_cv2(data)
        if rgb is None:
            if w * h >= 1 << 30:  # OpenCV's own limit (OPENCV_IO_MAX_IMAGE_PIXELS)
                raise ImageError(f"image has {w * h} pixels, over OpenCV's limit of {1 << 30}")
            raise ImageError(f"truncated or corrupt {fmt} file")
        if rgb.shape[:2] != (h, w):  # never seen; do not trust a disagreeing decoder
            rgb = None
    if rgb is None:
        try:
            rgb = _decode_pil(im)
        except Image.DecompressionBombError:
            raise ImageError(f"image has {w * h} pixels, over Pillow's limit") from None
        except DECODE_ERRORS as e:  # what a plugin raises on a corrupt body: one line
            raise ImageError(_short(e, f"corrupt {fmt or 'image'} file")) from None
    else:
        rgb = _to_rgb8(rgb)

    if exif_transpose:
        rgb = _apply_orientation(rgb, im)
    return rgb


def _apply_orientation(rgb: np.ndarray, im: Image.Image) -> np.ndarray:
    """PIL.ImageOps.exif_transpose on an array: the EXIF orientation tag, applied."""
    try:
        orientation = int(im.getexif().get(0x0112, 1))
    except Exception:  # an unreadable EXIF block means no usable orientation, as in Pillow
        return rgb
    fn = _ORIENT.get(orientation)
    return rgb if fn is None else np.ascontiguousarray(fn(rgb))


def iter_images(paths: Iterable[str | os.PathLike[str]],
                errors: list[tuple[str, OSError]] | None = None) -> Iterator[str]:
    """The image files under ``paths`` as strings, in walk order, possibly repeated.

    Files named directly are kept whatever their suffix (the user asked for them), and so
    are broken symbolic links and unreadable entries, so the caller reports them as
    failures instead of skipping them silently. Inside folders only ``IMAGE_EXTENSIONS``
    count; hidden files and folders (``.name``) are skipped there.

    A folder that cannot be listed (permissions, a mount that is down, a path longer than
    PATH_MAX) is appended to ``errors`` as (folder, error); without ``errors`` it raises,
    because an unreadable folder that looked empty would make its files look deleted.
    Strings, not Paths: a Path costs ~4x the memory, which matters for a million files.
    """
    def onerror(e: OSError) -> None:
        if errors is None:
            raise e
        errors.append((str(e.filename), e))

    for raw in paths:
        p = os.fspath(raw)
        if os.path.isdir(p):
            for root, dirs, files in os.walk(p, onerror=onerror, followlinks=False):
                dirs[:] = [d for d in dirs if not d.startswith(".")]
                for name in files:
                    if name.startswith("."):
                        continue
                    if os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS:
                        yield os.path.join(root, name)
        else:
            yield p  # a file, a broken link or a missing path: the caller reports it


def find_images(paths: Iterable[str | os.PathLike[str]],
                errors: list[tuple[str, OSError]] | None = None) -> list[Path]:
    """``iter_images`` sorted, without duplicates, as Paths."""
    return sorted({Path(p) for p in iter_images(paths, errors)})
