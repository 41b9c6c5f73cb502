"""Image files of any size and mode -> what the model saw in training: uint8 RGB (3, 32, 32).

The rule, applied by ``predict``, ``serve`` and ``bench`` alike:

1. EXIF orientation is applied (``ImageOps.exif_transpose``): a phone photo stored sideways is
   classified upright.
2. Colour: every mode becomes 8-bit RGB. Transparency (RGBA, LA, palette with a transparent
   colour) is composited on white, the usual background of cut-out product photos; 16-bit and
   32-bit grayscale are scaled to 0-255 (Pillow's own conversion clips them instead); CMYK
   JPEGs go through Pillow's CMYK->RGB conversion.
3. Geometry: the largest centred square is cropped (CIFAR objects are centred and photos are
   not squashed), then resized to 32x32 with ``Image.BOX``: each output pixel is the mean of
   the input pixels it covers. That is area averaging, the anti-aliased downscale that keeps
   no moire and no ringing, and costs the least for large photos. A model trained at a larger
   ``image_size`` is still fed the 32x32 image; its exported graph upsamples it exactly as
   training did.

A file that cannot be read raises ``ImageFileError`` (a ``CifarlensError``) naming the file and
the reason; callers report it per file and go on with the others.
"""

from __future__ import annotations

import io
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from cifarlens.errors import CifarlensError

CIFAR_SIZE = 32
# Pillow's own default (about 89 million pixels): larger files are refused as decompression bombs.
DEFAULT_MAX_PIXELS = 89_478_485
BACKGROUND = (255, 255, 255)


class ImageFileError(CifarlensError):
    """One image file could not be read; the message names the file and why."""


def load_image(
    source: str | Path | bytes, *, size: int = CIFAR_SIZE, max_pixels: int = DEFAULT_MAX_PIXELS, name: str | None = None
) -> np.ndarray:
    """Read an image file (path or the file's bytes) as uint8 RGB (3, size, size). Raises ``ImageFileError``."""
    label = name or (str(source) if not isinstance(source, bytes) else "upload")
    if isinstance(source, bytes):
        if not source:
            raise ImageFileError(f"{label}: empty file (0 bytes)")
        stream = io.BytesIO(source)
    else:
        path = Path(source)
        try:
            if path.is_dir():
                raise ImageFileError(f"{label}: is a directory")
            if path.stat().st_size == 0:
                raise ImageFileError(f"{label}: empty file (0 bytes)")
            stream = open(path, "rb")  # noqa: SIM115 - closed below
        except OSError as err:
            raise ImageFileError(f"{label}: cannot open ({err.strerror or err})") from None
    try:
        with stream:
            return _decode(stream, label, size, max_pixels)
    except ImageFileError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise ImageFileError(
            f"{label}: over the pixel limit (decompression-bomb guard: {err}); shrink the image or raise --max-pixels"
        ) from None
    except UnidentifiedImageError:
        raise ImageFileError(f"{label}: not an image file Pillow can read") from None
    except (OSError, ValueError, SyntaxError, EOFError) as err:
        raise ImageFileError(f"{label}: truncated or corrupt image ({err})") from None
    except Exception as err:  # malformed files make Pillow's decoders raise almost anything (struct.error, ...)
        raise ImageFileError(f"{label}: corrupt image ({type(err).__name__}: {err})") from None


def set_pillow_pixel_limit(max_pixels: int) -> None:
    """Make Pillow's own decompression-bomb limit ``max_pixels`` (process-wide; the CLI commands call it)."""
    Image.MAX_IMAGE_PIXELS = max_pixels


def _decode(stream, label: str, size: int, max_pixels: int) -> np.ndarray:
    with warnings.catch_warnings():
        # Pillow warns (not raises) between its limit and twice it; a bomb must never be decoded.
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        img = Image.open(stream)
    with img:
        width, height = img.size
        if width * height > max_pixels:
            raise ImageFileError(
                f"{label}: {width}x{height} = {width * height:,} pixels is over the limit of {max_pixels:,} "
                "(decompression-bomb guard); shrink the image or raise --max-pixels"
            )
        img.load()
        rgb = to_rgb(ImageOps.exif_transpose(img))
    square = ImageOps.fit(rgb, (size, size), method=Image.Resampling.BOX, centering=(0.5, 0.5))
    return np.asarray(square, dtype=np.uint8).transpose(2, 0, 1).copy()


def to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode -> 8-bit RGB (alpha composited on white, high bit depths scaled, not clipped)."""
    if img.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        values = np.asarray(img, dtype=np.float64)
        # 16-bit files open as I;16 or I (32-bit int) holding 0..65535; F images are taken as 0..1 or 0..255.
        top = 65535.0 if img.mode != "F" else (1.0 if values.max(initial=0) <= 1.0 else 255.0)
        gray = np.clip(np.rint(values / top * 255.0), 0, 255).astype(np.uint8)
        return Image.fromarray(gray).convert("RGB")
    if img.mode == "P" and "transparency" in img.info or img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, BACKGROUND + (255,))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


@dataclass
class FileList:
    """Image files found under the given paths, in order, and one error line per bad path."""

    files: list[Path] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def image_extensions() -> set[str]:
    """File suffixes Pillow can open (lower case, with the dot)."""
    Image.init()
    return {ext.lower() for ext in Image.registered_extensions()}


def collect_images(paths: list[str | Path]) -> FileList:
    """Expand files and folders (recursively, following links) into image files.

    A file named explicitly is always tried; inside folders only files with an image suffix are
    taken (hidden ones skipped). Missing paths and folder links that lead back into a folder
    already being walked (loops) become error lines instead of hanging or repeating files.
    """
    found = FileList()
    exts = image_extensions()
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            _walk(path, exts, found)
        elif path.exists() or path.is_symlink():
            found.files.append(path)
        else:
            found.errors.append(f"{path}: no such file or directory")
    return found


def _walk(top: Path, exts: set[str], found: FileList) -> None:
    ancestors: dict[str, Path] = {}

    def visit(folder: Path) -> None:
        real = os.path.realpath(folder)
        if real in ancestors:
            found.errors.append(f"{folder}: directory loop (links back to {ancestors[real]}); skipped")
            return
        ancestors[real] = folder
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as err:
            found.errors.append(f"{folder}: cannot list folder ({err.strerror or err})")
            entries = []
        for entry in entries:
            if entry.name.startswith("."):
                continue
            child = Path(entry.path)
            if entry.is_dir(follow_symlinks=True):
                visit(child)
            elif Path(entry.name).suffix.lower() in exts:
                found.files.append(child)
        del ancestors[real]

    visit(top)
