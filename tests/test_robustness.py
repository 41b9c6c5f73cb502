"""CIFAR-10-C corruptions: shapes, seeds, severities, and equality with independent computations at the
reference generator's constants (hendrycks/robustness, make_cifar_c.py)."""

from __future__ import annotations

import ctypes
import io

import numpy as np
import pytest
import torch
from PIL import Image

from cifarlens.errors import ConfigError
from cifarlens.robustness import CORRUPTIONS, benchmark_names, corrupt, parse_corruptions, parse_severities
from cifarlens.robustness.corruptions import clipped_zoom, gaussian_blur_batch, motion_blur_batch


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    """16 natural-looking 32x32 images: smooth colour gradients with edges and texture, seeded."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:32, 0:32] / 31.0
    out = []
    for _ in range(16):
        a, b, c = rng.uniform(0.2, 0.8, 3)
        base = np.stack([a + 0.3 * xx, b + 0.3 * yy, c - 0.2 * xx * yy], 0)
        base[:, 8:20, 10:24] *= rng.uniform(0.3, 0.9)  # an object
        base += rng.normal(0, 0.03, base.shape)
        out.append(np.clip(base, 0, 1) * 255)
    return torch.from_numpy(np.stack(out).astype(np.uint8))


@pytest.fixture(autouse=True)
def frost_textures(tmp_path_factory, monkeypatch):
    """Frost textures where frost looks for them (the reference's are not shipped): seeded noise images."""
    folder = tmp_path_factory.getbasetemp() / "frost"
    if not folder.is_dir():
        folder.mkdir()
        rng = np.random.default_rng(1)
        for i in range(1, 7):
            texture = (rng.uniform(0, 255, (400, 500, 3))).astype(np.uint8)
            Image.fromarray(texture).save(folder / (f"frost{i}.png" if i < 4 else f"frost{i}.jpg"))
    monkeypatch.setenv("CIFARLENS_FROST_DIR", str(folder))


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = ((a.double() - b.double()) ** 2).mean()
    return float(10 * torch.log10(255.0**2 / mse))


def test_nineteen_corruptions_fifteen_in_the_benchmark_in_the_papers_order():
    assert len(CORRUPTIONS) == 19
    assert benchmark_names() == [
        "gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur", "motion_blur", "zoom_blur",
        "snow", "frost", "fog", "brightness", "contrast", "elastic_transform", "pixelate", "jpeg_compression",
    ]  # fmt: skip
    extras = {c.name for c in CORRUPTIONS.values() if not c.benchmark}
    assert extras == {"speckle_noise", "gaussian_blur", "spatter", "saturate"}


@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_corruption_keeps_shape_dtype_is_seeded_and_damages_more_with_severity(images, name):
    first = corrupt(images, name, 1, seed=3)
    assert first.shape == images.shape and first.dtype == torch.uint8
    assert torch.equal(first, corrupt(images, name, 1, seed=3))
    last = corrupt(images, name, 5, seed=3)
    assert not torch.equal(last, images)
    if name != "elastic_transform":  # its severity 1 is an affine jitter of 2.56 px, severity 5 one of 0.96 px
        assert psnr(last, images) < psnr(first, images), name
    random = name not in ("brightness", "contrast", "saturate", "pixelate", "jpeg_compression", "defocus_blur",
                          "gaussian_blur", "zoom_blur")  # fmt: skip
    if random:
        assert not torch.equal(corrupt(images, name, 3, seed=3), corrupt(images, name, 3, seed=4)), name


def test_the_same_seed_gives_the_same_image_whatever_else_is_in_the_split(images):
    alone = corrupt(images[:4], "gaussian_noise", 2, seed=0)
    assert torch.equal(alone, corrupt(images[:4], "gaussian_noise", 2, seed=0))
    assert not torch.equal(alone, corrupt(images[:4], "shot_noise", 2, seed=0))


def test_one_image_is_made_again_exactly_from_its_chunk():
    from cifarlens.robustness.corruptions import CHUNK, corrupt_one

    many = torch.randint(0, 256, (CHUNK + 40, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    whole = corrupt(many, "glass_blur", 2, seed=5)
    for position in (3, CHUNK + 7):
        assert torch.equal(corrupt_one(many, position, "glass_blur", 2, seed=5), whole[position])


def unit(images: torch.Tensor) -> np.ndarray:
    return images.permute(0, 2, 3, 1).numpy() / 255.0


def as_uint8(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy((np.clip(array, 0, 1) * 255).astype(np.uint8)).permute(0, 3, 1, 2)


@pytest.mark.parametrize("severity,c", list(enumerate((0.75, 0.5, 0.4, 0.3, 0.15), 1)))
def test_contrast_equals_the_closed_form(images, severity, c):
    x = unit(images)
    means = x.mean(axis=(1, 2), keepdims=True)
    assert torch.equal(corrupt(images, "contrast", severity), as_uint8((x - means) * c + means))


def test_brightness_and_saturate_equal_scikit_image_hsv_with_the_reference_constants(images):
    from skimage.color import hsv2rgb, rgb2hsv

    for severity, shift in enumerate((0.05, 0.1, 0.15, 0.2, 0.3), 1):
        hsv = np.stack([rgb2hsv(im) for im in unit(images)])
        hsv[..., 2] = np.clip(hsv[..., 2] + shift, 0, 1)
        expected = as_uint8(np.stack([hsv2rgb(h) for h in hsv]))
        assert torch.equal(corrupt(images, "brightness", severity), expected)
    for severity, (scale, add) in enumerate(((0.3, 0), (0.1, 0), (1.5, 0), (2, 0.1), (2.5, 0.2)), 1):
        hsv = np.stack([rgb2hsv(im) for im in unit(images)])
        hsv[..., 1] = np.clip(hsv[..., 1] * scale + add, 0, 1)
        assert torch.equal(corrupt(images, "saturate", severity), as_uint8(np.stack([hsv2rgb(h) for h in hsv])))


def test_pixelate_and_jpeg_equal_pillow_with_the_reference_constants(images):
    arrays = images.permute(0, 2, 3, 1).numpy()
    for severity, c in enumerate((0.95, 0.9, 0.85, 0.75, 0.65), 1):
        size = int(32 * c)
        expected = [
            np.asarray(Image.fromarray(a).resize((size, size), Image.BOX).resize((32, 32), Image.BOX)) for a in arrays
        ]
        assert torch.equal(
            corrupt(images, "pixelate", severity), torch.from_numpy(np.stack(expected)).permute(0, 3, 1, 2)
        )
    for severity, quality in enumerate((80, 65, 58, 50, 40), 1):
        expected = []
        for a in arrays:
            buffer = io.BytesIO()
            Image.fromarray(a).save(buffer, "JPEG", quality=quality)
            expected.append(np.asarray(Image.open(buffer)))
        assert torch.equal(
            corrupt(images, "jpeg_compression", severity), torch.from_numpy(np.stack(expected)).permute(0, 3, 1, 2)
        )


def gray(value: int, n: int = 64) -> torch.Tensor:
    return torch.full((n, 3, 32, 32), value, dtype=torch.uint8)


@pytest.mark.parametrize("severity", [1, 3, 5])
def test_noise_has_the_reference_distribution_and_scale(severity):
    x = gray(128)
    base = 128 / 255
    # Truncation to uint8 lowers each value by half a level on average: the reference does the same.
    added = unit(corrupt(x, "gaussian_noise", severity)) - base + 0.5 / 255
    assert abs(added.std() - (0.04, 0.06, 0.08, 0.09, 0.10)[severity - 1]) < 0.002
    assert abs(added.mean()) < 0.001
    rate = (500, 250, 100, 75, 50)[severity - 1]
    shot = unit(corrupt(x, "shot_noise", severity)) + 0.5 / 255
    assert abs(shot.var() - base / rate) < 0.06 * base / rate  # Poisson(x c) / c has variance x / c
    amount = (0.01, 0.02, 0.03, 0.05, 0.07)[severity - 1]
    impulse = corrupt(x, "impulse_noise", severity).numpy()
    assert abs((impulse == 255).mean() - amount / 2) < 0.002 and abs((impulse == 0).mean() - amount / 2) < 0.002
    assert ((impulse == 255) | (impulse == 0) | (impulse == 128)).all()
    speckle = unit(corrupt(x, "speckle_noise", severity)) - base + 0.5 / 255
    assert abs(speckle.std() - base * (0.06, 0.1, 0.12, 0.16, 0.2)[severity - 1]) < 0.002


def test_blur_and_zoom_helpers_equal_scikit_image_and_scipy(images):
    from scipy.ndimage import zoom
    from skimage.filters import gaussian

    x = unit(images)
    for sigma in (0.4, 1.0):
        expected = np.stack([gaussian(im, sigma=sigma, channel_axis=-1) for im in x])
        ours = gaussian_blur_batch(torch.from_numpy(x).permute(0, 3, 1, 2), sigma).permute(0, 2, 3, 1).numpy()
        np.testing.assert_allclose(ours, expected, atol=1e-12)
    for factor in (1.05, 1.25, 2.25):
        crop = int(np.ceil(32 / factor))
        top = (32 - crop) // 2
        expected = []
        for im in x.astype(np.float32):
            zoomed = zoom(im[top : top + crop, top : top + crop], (factor, factor, 1), order=1)
            trim = (zoomed.shape[0] - 32) // 2
            expected.append(zoomed[trim : trim + 32, trim : trim + 32])
        ours = clipped_zoom(torch.from_numpy(x.astype(np.float32)).permute(0, 3, 1, 2), factor)
        np.testing.assert_allclose(ours.permute(0, 2, 3, 1).numpy(), np.stack(expected), atol=1e-6)


def test_defocus_blur_equals_opencv_filtering_with_the_reference_disk(images):
    import cv2

    from cifarlens.robustness.corruptions import disk_kernel

    x = unit(images)
    for severity, c in enumerate(((0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1)), 1):
        kernel = disk_kernel(*c)
        assert kernel.shape == (17, 17) and abs(kernel.sum() - 1) < 1e-5
        filtered = np.stack([np.stack([cv2.filter2D(im[..., d], -1, kernel) for d in range(3)], -1) for im in x])
        assert torch.equal(corrupt(images, "defocus_blur", severity), as_uint8(filtered))


def test_motion_blur_equals_imagemagick(images):
    wand_image = pytest.importorskip("wand.image", reason="Wand and Debian's libmagickwand-6.q16-6")
    import cv2
    from wand.api import library

    library.MagickMotionBlurImage.argtypes = (ctypes.c_void_p, ctypes.c_double, ctypes.c_double, ctypes.c_double)
    angles = np.random.default_rng(0).uniform(-135, 45, len(images))
    for radius, sigma in ((6, 1), (9, 2.5), (14, 12)):
        expected = []
        for image, angle in zip(images.permute(0, 2, 3, 1).numpy(), angles):
            png = io.BytesIO()
            Image.fromarray(image).save(png, format="PNG")
            with wand_image.Image(blob=png.getvalue()) as blurred:
                library.MagickMotionBlurImage(blurred.wand, radius, sigma, angle)
                out = cv2.imdecode(np.frombuffer(blurred.make_blob(), np.uint8), cv2.IMREAD_UNCHANGED)
            expected.append(out[..., ::-1] if out.ndim == 3 else np.stack([out] * 3, -1))
        ours = motion_blur_batch(images, radius, sigma, torch.from_numpy(angles))
        assert torch.equal(ours, torch.from_numpy(np.stack(expected)).permute(0, 3, 1, 2)), (radius, sigma)


def test_frost_blends_the_textures_found_where_it_looks(images, tmp_path, monkeypatch):
    frosted = corrupt(images, "frost", 1)
    # severity 1 is 1.0 x image + 0.2 x texture: never darker than the image
    assert (frosted.int() >= images.int()).all() and (frosted.int() > images.int()).any()
    monkeypatch.setenv("CIFARLENS_FROST_DIR", str(tmp_path / "empty"))
    monkeypatch.setenv("CIFARLENS_OFFLINE", "1")
    import importlib.util

    if importlib.util.find_spec("imagecorruptions") is None:
        with pytest.raises(Exception, match="frost1.png.*CIFARLENS_FROST_DIR"):
            corrupt(images, "frost", 1)


def test_unknown_corruption_or_severity_names_the_valid_ones():
    with pytest.raises(
        ConfigError, match="unknown corruption fogg; choose all, benchmark or names from gaussian_noise"
    ):
        parse_corruptions("fog,fogg")
    with pytest.raises(ConfigError, match="outside 1-5; choose severities from 1, 2, 3, 4, 5"):
        parse_severities("0-3")
    with pytest.raises(ConfigError, match="outside 1-5"):
        parse_severities("6")
    assert parse_severities("1-5") == [1, 2, 3, 4, 5] and parse_severities("5,1") == [1, 5]
    assert parse_corruptions("benchmark") == benchmark_names() and len(parse_corruptions("all")) == 19
