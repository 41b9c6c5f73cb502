import warnings

import numpy as np
import pytest
import torch
from conftest import CLASSES, real_data_dir, realdata, write_cifar

from cifarlens.data import (
    Augmenter,
    load_cifar10,
    normalize,
    prepare_data,
    stratified_indices,
    train_val_indices,
)
from cifarlens.data.augment import (
    CIFAR10_MEAN,
    EpochImages,
    color_jitter,
    cutout,
    jpeg_copies,
    random_crop,
    random_flip,
)
from cifarlens.data.batches import iterate_batches
from cifarlens.data.cifar10 import read_batch
from cifarlens.errors import ConfigError, DataError


def load_quiet(path, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_cifar10(path, **kwargs)


def test_reads_official_layout_from_folder_or_parent(cifar_root):
    for path in (cifar_root, cifar_root / "cifar-10-batches-py"):
        data = load_quiet(path, download=False)
        assert data.train.images.shape == (500, 3, 32, 32)
        assert data.train.images.dtype == torch.uint8
        assert data.test.labels.dtype == torch.int64
        assert data.classes == tuple(CLASSES)


def test_pixel_layout_is_rgb_planes(cifar_root):
    # Class 0 images are brightened in the red plane; rows 0-2 are a white stripe.
    data = load_quiet(cifar_root, download=False)
    img = data.train.images[data.train.labels == 0][0].float()
    assert img[0, 10:].mean() > img[1, 10:].mean() + 80
    assert (img[:, 0:3, :] == 250).all()


def test_bytes_keys_batches(tmp_path):
    root = write_cifar(tmp_path, per_batch=20, test_size=20, bytes_keys=True)
    data = load_quiet(root, download=False)
    assert len(data.train) == 100 and len(data.test) == 20


def test_md5_mismatch_is_a_warning(cifar_root):
    with pytest.warns(UserWarning, match="MD5"):
        load_cifar10(cifar_root, download=False)


def test_missing_data_names_where_it_looked(tmp_path, no_env_data_dir):
    with pytest.raises(DataError, match=str(tmp_path / "nowhere")) as err:
        load_cifar10(tmp_path / "nowhere", download=False)
    assert "CIFARLENS_DATA_DIR" in str(err.value)


def test_data_dir_precedence(monkeypatch, cifar_root, tmp_path):
    monkeypatch.setenv("CIFARLENS_DATA_DIR", str(cifar_root))
    assert len(load_quiet(None, download=False).train) == 500
    with pytest.raises(DataError, match="--data-dir"):
        load_cifar10(tmp_path / "empty", download=False)


def test_failed_download_is_one_clear_error(tmp_path, no_env_data_dir, monkeypatch):
    import torchvision.datasets

    def offline(*args, **kwargs):
        raise OSError("network unreachable")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", offline)
    with pytest.raises(DataError, match="download failed.*network unreachable"):
        load_cifar10(tmp_path / "dl", download=True)


def test_truncated_batch_names_the_file(tmp_path):
    root = write_cifar(tmp_path, per_batch=20, test_size=20)
    path = root / "cifar-10-batches-py" / "data_batch_3"
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(DataError, match="data_batch_3 is truncated or corrupted"):
        load_quiet(root, download=False)


def test_garbage_batch_is_refused_without_running_code(tmp_path):
    import pickle

    root = write_cifar(tmp_path, per_batch=20, test_size=20)
    path = root / "cifar-10-batches-py" / "test_batch"
    path.write_bytes(pickle.dumps(print))  # a pickle that would call a global
    with pytest.raises(DataError, match="test_batch"):
        read_batch(path)


def test_stratified_subset_is_balanced_and_seeded():
    labels = torch.arange(1000) % 10
    idx = stratified_indices(labels, 200, seed=1)
    assert len(idx) == 200 and len(set(idx.tolist())) == 200
    assert labels[idx].bincount().tolist() == [20] * 10
    assert torch.equal(idx, stratified_indices(labels, 200, seed=1))
    assert not torch.equal(idx, stratified_indices(labels, 200, seed=2))
    with pytest.raises(ConfigError, match="cannot take 2000"):
        stratified_indices(labels, 2000, seed=0)


def test_val_split_is_disjoint_and_independent_of_subset(cifar_root):
    train, val = train_val_indices(torch.arange(500) % 10, 50, seed=0)
    assert len(set(train.tolist()) & set(val.tolist())) == 0 and len(train) + len(val) == 500
    a = prepare_data(cifar_root, download=False, val_size=50, subset=100, seed=0)
    b = prepare_data(cifar_root, download=False, val_size=50, subset=200, seed=0)
    assert torch.equal(a.val.images, b.val.images)
    assert len(a.train) == 100 and len(a.test) == 100
    assert a.split("val") is a.val
    with pytest.raises(ConfigError, match="val-size"):
        prepare_data(cifar_root, download=False).split("val")


def test_augmentations_shapes_and_determinism():
    x = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8)
    aug = Augmenter("crop,flip,cutout", crop_padding=4, cutout_size=8)
    a = aug(x, torch.Generator().manual_seed(0))
    b = aug(x, torch.Generator().manual_seed(0))
    c = aug(x, torch.Generator().manual_seed(1))
    assert a.shape == x.shape and a.dtype == torch.uint8
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_crop_is_a_translation():
    x = torch.arange(32 * 32, dtype=torch.float32).view(1, 1, 32, 32).repeat(64, 1, 1, 1)
    out = random_crop(x, 4, torch.Generator().manual_seed(0))
    # the centre 24x24 of each crop is an exact shifted window of the original
    for img in out:
        centre = img[0, 4:28, 4:28]
        dy, dx = divmod(int(centre[0, 0].item()), 32)
        assert torch.equal(centre, x[0, 0, dy : dy + 24, dx : dx + 24])


def test_crop_to_a_smaller_window_keeps_native_scale():
    x = torch.arange(32 * 32, dtype=torch.float32).view(1, 1, 32, 32).repeat(64, 1, 1, 1)
    out = random_crop(x, 2, torch.Generator().manual_seed(0), size=24)
    assert out.shape == (64, 1, 24, 24)
    offsets = set()
    for img in out:
        # away from the reflected border, each window is an unscaled piece of the original
        dy, dx = divmod(int(img[0, 2, 2].item()), 32)
        assert torch.equal(img[0, 2:22, 2:22], x[0, 0, dy : dy + 20, dx : dx + 20])
        offsets.add((dy, dx))
    assert len(offsets) > 20  # offsets drawn per image over the 12 x 12 range, not one per batch


def test_flip_mirrors_about_half():
    x = torch.arange(32, dtype=torch.float32).view(1, 1, 1, 32).repeat(1000, 1, 32, 1)
    out = random_flip(x, torch.Generator().manual_seed(0))
    flipped = (out[:, 0, 0, 0] == 31).float().mean().item()
    assert 0.4 < flipped < 0.6
    assert torch.equal(out[out[:, 0, 0, 0] == 31][0], x[0].flip(2))


def test_cutout_zeroes_a_square():
    x = torch.full((8, 3, 32, 32), 200, dtype=torch.uint8)
    out = cutout(x, 8, torch.Generator().manual_seed(0))
    zeros = (out[:, 0] == 0).sum(dim=(1, 2))
    assert (zeros > 0).all() and (zeros <= 64).all()


def test_color_jitter_shifts_brightness_and_scales_contrast_per_image():
    mean = [round(255 * m) for m in CIFAR10_MEAN]
    # Two pixel values per image, one channel each: one at the channel mean, one 60 levels above it.
    x = torch.tensor(mean, dtype=torch.uint8).view(1, 3, 1, 1).repeat(500, 1, 1, 2)
    x[..., 1] += 60
    out = color_jitter(x, brightness=0.04, contrast=0.2, generator=torch.Generator().manual_seed(0))
    assert out.dtype == torch.uint8 and out.shape == x.shape
    out = out.float()
    shift = out[:, 0, 0, 0] - mean[0]  # the mean pixel moves by the brightness shift only
    assert shift.abs().max() <= 0.04 * 255 + 1 and shift.std() > 3
    scale = (out[:, 0, 0, 1] - out[:, 0, 0, 0]) / 60  # the difference scales by the contrast factor
    assert (scale - 1).abs().max() <= 0.2 + 1 / 60 and scale.std() > 0.05
    # one factor pair per image: every channel of an image moved alike
    assert torch.allclose(out[:, 1, 0, 0] - mean[1], shift, atol=1)
    bright = color_jitter(torch.full((64, 3, 2, 2), 250, dtype=torch.uint8), 0.5, 0.0, torch.Generator().manual_seed(0))
    assert (bright == 255).any() and (bright >= 250 - 128).all()  # clipped at 255, never wrapped around to dark


def test_unknown_augmentation_lists_valid():
    with pytest.raises(ConfigError, match="crop, flip, altflip, jpeg, augmix, cutout, color"):
        Augmenter("crop,rotate")


def test_augmix_replaces_about_half_the_images_seeded_and_keeps_the_rest():
    from cifarlens.data import EpochImages

    images = torch.randint(0, 256, (400, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    epoch = EpochImages(images, "augmix", seed=0)
    first = epoch(0, torch.Generator().manual_seed(7))
    assert first.shape == images.shape and first.dtype == torch.uint8
    assert torch.equal(first, epoch(0, torch.Generator().manual_seed(7)))  # seeded: a resumed epoch sees the same
    changed = (first != images).flatten(1).any(1)
    assert 0.4 < changed.float().mean() < 0.6
    assert not torch.equal(first, epoch(1, torch.Generator().manual_seed(8)))
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    epoch(0, torch.Generator().manual_seed(7))
    assert torch.equal(torch.rand(1), before)  # the global random state is left as it was


def test_normalize_uses_cifar_statistics():
    x = torch.full((2, 3, 4, 4), 255, dtype=torch.uint8)
    y = normalize(x, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    assert torch.allclose(y, torch.ones_like(y))


def test_batches_cover_split_once(cifar_root):
    data = load_quiet(cifar_root, download=False)
    labels = torch.cat(
        [y for _, y in iterate_batches(data.train, 64, shuffle=True, generator=torch.Generator().manual_seed(0))]
    )
    assert sorted(labels.tolist()) == sorted(data.train.labels.tolist())


@realdata
def test_real_cifar10_shapes_and_balance():
    data = load_quiet(real_data_dir(), download=False)
    assert data.train.images.shape == (50000, 3, 32, 32)
    assert data.test.images.shape == (10000, 3, 32, 32)
    assert data.train.labels.bincount().tolist() == [5000] * 10
    assert data.test.labels.bincount().tolist() == [1000] * 10
    assert np.isclose(data.train.images.float().mean().item() / 255, 0.4734, atol=2e-3)


def test_altflip_mirrors_every_image_once_per_two_epochs():
    images = torch.randint(0, 256, (200, 3, 8, 8), dtype=torch.uint8)
    view = EpochImages(images, "crop,altflip", seed=0)
    gen = torch.Generator()
    even, odd = view(0, gen), view(1, gen)
    flipped_even = (even == images.flip(3)).flatten(1).all(1)
    flipped_odd = (odd == images.flip(3)).flatten(1).all(1)
    assert torch.equal(flipped_even, ~flipped_odd)  # each image mirrored in exactly one of the two epochs
    assert 60 < int(flipped_even.sum()) < 140
    assert torch.equal(view(2, gen), even) and torch.equal(EpochImages(images, "altflip", seed=0)(0, gen), even)
    with pytest.raises(ConfigError, match="both flip and altflip"):
        EpochImages(images, "flip,altflip", seed=0)


def test_jpeg_copies_look_like_quality_75_jpeg(cifar_root):
    images = load_cifar10(cifar_root, download=False).train.images[:64]
    copies = jpeg_copies(images)
    assert copies.shape == images.shape and copies.dtype == torch.uint8
    assert not torch.equal(copies, images)
    assert (copies.float() - images.float()).abs().mean() < 20  # degraded, not destroyed
    # JPEG at a fixed quality is nearly idempotent: a second pass changes far less than the first.
    again = jpeg_copies(copies)
    assert (again.float() - copies.float()).abs().mean() < 0.5 * (copies.float() - images.float()).abs().mean()


def test_jpeg_mix_swaps_about_half_and_is_seeded():
    images = torch.randint(0, 256, (300, 3, 16, 16), dtype=torch.uint8)
    view = EpochImages(images, "jpeg", seed=0)
    a = view(0, torch.Generator().manual_seed(5))
    b = view(0, torch.Generator().manual_seed(5))
    assert torch.equal(a, b)
    from_jpeg = (a == view.jpeg).flatten(1).all(1) & ~(a == images).flatten(1).all(1)
    from_original = (a == images).flatten(1).all(1)
    assert bool((from_jpeg | from_original).all()) and 100 < int(from_jpeg.sum()) < 200
