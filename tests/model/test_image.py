"""neva_model.image against transformers' CLIP image processor (PIL path), plus input handling and errors."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from neva_kernels.errors import NevaTypeError, NevaValueError
from neva_model.image import CLIP_MEAN, CLIP_STD, NevaImageError, preprocess_images

try:  # transformers >= 5: the PIL backend has its own class; before, CLIPImageProcessor was the PIL one
    from transformers import CLIPImageProcessorPil as _HFProcessor
except ImportError:
    from transformers import CLIPImageProcessor as _HFProcessor

TOLERANCE = 1e-5  # both resize with PIL, so only float rounding may differ


def hf_pixels(images, image_size, **kwargs) -> torch.Tensor:
    processor = _HFProcessor(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size},
        resample=Image.Resampling.BICUBIC, do_resize=True, do_center_crop=True, do_convert_rgb=True,
        do_rescale=kwargs.pop("do_rescale", True), rescale_factor=1 / 255, do_normalize=True,
        image_mean=kwargs.pop("image_mean", list(CLIP_MEAN)), image_std=kwargs.pop("image_std", list(CLIP_STD)),
    )
    assert not kwargs
    return processor(images, return_tensors="pt")["pixel_values"]


def random_image(width: int, height: int) -> Image.Image:
    return Image.fromarray(np.random.randint(0, 256, size=(height, width, 3), dtype=np.uint8))


def assert_matches(ours: torch.Tensor, reference: torch.Tensor) -> None:
    assert ours.dtype == torch.float32 and ours.is_contiguous()
    assert ours.shape == reference.shape, f"{tuple(ours.shape)} != {tuple(reference.shape)}"
    error = (ours - reference).abs().max().item()
    assert error < TOLERANCE, f"max abs difference {error:.3g} to transformers' CLIP processor"


@pytest.fixture(autouse=True)
def numpy_seed(fresh_seed):
    np.random.seed(int(torch.randint(0, 2**31, ())))


@pytest.mark.parametrize(
    "width, height, image_size",
    [(451, 217, 336), (217, 451, 336), (333, 333, 224), (97, 41, 64), (40, 997, 37), (31, 29, 336)],
)
def test_pil_images_match_transformers(width, height, image_size):
    image = random_image(width, height)
    assert_matches(preprocess_images([image], image_size), hf_pixels(image, image_size))


@pytest.mark.parametrize("mode", ["L", "P", "CMYK"])
def test_other_modes_are_converted_like_transformers(mode):
    image = random_image(123, 77).convert(mode)
    assert_matches(preprocess_images(image, 64), hf_pixels(image, 64))


def test_transparency_is_composited_onto_white():
    rgba = np.random.randint(0, 256, size=(50, 70, 4), dtype=np.uint8)
    rgba[..., 3] = np.where(np.random.rand(50, 70) < 0.5, 0, 255)  # fully clear or fully opaque pixels
    expected_rgb = np.where(rgba[..., 3:] == 255, rgba[..., :3], 255).astype(np.uint8)
    ours = preprocess_images(Image.fromarray(rgba), 48)
    assert torch.equal(ours, preprocess_images(Image.fromarray(expected_rgb), 48))


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_files_by_str_and_pathlike(tmp_path, suffix):
    path = tmp_path / f"picture{suffix}"
    random_image(211, 137).save(path)
    with Image.open(path) as decoded:
        reference = hf_pixels(decoded.convert("RGB"), 96)
    assert_matches(preprocess_images([str(path), path], 96), torch.cat([reference, reference]))


def test_uint8_tensors_match_transformers():
    batch = torch.randint(0, 256, (2, 3, 45, 83), dtype=torch.uint8)
    reference = hf_pixels([image for image in batch], 32)
    assert_matches(preprocess_images(batch, 32), reference)
    assert_matches(preprocess_images([batch[0], batch[1]], 32), reference)


def test_float_tensors_match_transformers():
    batch = torch.rand(3, 3, 61, 40, dtype=torch.float32)
    # A float image is already in [0, 1]: transformers must not rescale it a second time.
    reference = hf_pixels([image for image in batch], 48, do_rescale=False)
    assert_matches(preprocess_images(batch, 48), reference)
    assert_matches(preprocess_images(batch.double(), 48), reference)


def test_non_contiguous_tensor_gives_the_same_pixels():
    batch = torch.randint(0, 256, (2, 3, 40, 52), dtype=torch.uint8)
    channels_last = batch.contiguous(memory_format=torch.channels_last)
    transposed = batch.transpose(-1, -2).contiguous().transpose(-1, -2)
    assert not transposed.is_contiguous()
    expected = preprocess_images(batch, 24)
    assert torch.equal(preprocess_images(channels_last, 24), expected)
    assert torch.equal(preprocess_images(transposed, 24), expected)


def test_mixed_inputs_keep_their_order(tmp_path):
    path = tmp_path / "a.png"
    first = random_image(90, 60)
    first.save(path)
    second = random_image(60, 90)
    pair = torch.randint(0, 256, (2, 3, 33, 66), dtype=torch.uint8)
    out = preprocess_images([path, second, pair], 32)
    assert out.shape == (4, 3, 32, 32)
    assert torch.equal(out[0], preprocess_images(first, 32)[0])
    assert torch.equal(out[1], preprocess_images(second, 32)[0])
    assert torch.equal(out[2:], preprocess_images(pair, 32))


def test_custom_mean_and_std():
    image = random_image(80, 50)
    mean, std = (0.5, 0.25, 0.125), (0.2, 0.3, 0.4)
    assert_matches(preprocess_images(image, 40, mean=mean, std=std),
                   hf_pixels(image, 40, image_mean=list(mean), image_std=list(std)))


def test_empty_batch():
    out = preprocess_images([], 16)
    assert out.shape == (0, 3, 16, 16) and out.dtype == torch.float32


def test_missing_file_names_it(tmp_path):
    missing = tmp_path / "nowhere.png"
    with pytest.raises(NevaImageError, match="nowhere.png.*does not exist") as caught:
        preprocess_images([missing], 32)
    assert isinstance(caught.value, ValueError)


def test_garbage_file_names_it(tmp_path):
    path = tmp_path / "garbage.png"
    path.write_bytes(b"this is not an image at all")
    with pytest.raises(NevaImageError, match="garbage.png"):
        preprocess_images(str(path), 32)


def test_truncated_file_names_it(tmp_path):
    whole = tmp_path / "whole.png"
    random_image(64, 64).save(whole)
    cut = tmp_path / "cut.png"
    cut.write_bytes(whole.read_bytes()[:200])
    with pytest.raises(NevaImageError, match="cut.png"):
        preprocess_images(cut, 32)


def test_directory_is_not_an_image(tmp_path):
    with pytest.raises(NevaImageError, match=str(Path(tmp_path).name)):
        preprocess_images(tmp_path, 32)


@pytest.mark.parametrize(
    "tensor, error, message",
    [
        (torch.zeros(4, 10, 10, dtype=torch.uint8), NevaValueError, r"images\[0\] must have shape"),
        (torch.zeros(10, 10, dtype=torch.uint8), NevaValueError, r"images\[0\] must have shape"),
        (torch.zeros(3, 0, 10, dtype=torch.uint8), NevaValueError, r"images\[0\] has an empty"),
        (torch.zeros(3, 10, 10, dtype=torch.int32), NevaTypeError, r"images\[0\] must be uint8"),
        (torch.full((3, 10, 10), 1.5), NevaValueError, r"images\[0\] is a float tensor"),
        (torch.full((3, 10, 10), float("nan")), NevaValueError, r"images\[0\] contains NaN"),
    ],
)
def test_bad_tensors_name_the_argument(tensor, error, message):
    with pytest.raises(error, match=message):
        preprocess_images([tensor], 8)


def test_bad_arguments():
    image = random_image(20, 20)
    with pytest.raises(NevaTypeError, match=r"images\[1\] must be a path"):
        preprocess_images([image, 42], 8)
    with pytest.raises(NevaTypeError, match="images must be"):
        preprocess_images(42, 8)
    for size, error in ((0, NevaValueError), (3.5, NevaTypeError), (True, NevaTypeError)):
        with pytest.raises(error, match="image_size"):
            preprocess_images(image, size)
    with pytest.raises(NevaValueError, match="std must be positive"):
        preprocess_images(image, 8, std=(0.2, 0.0, 0.2))
    with pytest.raises(NevaValueError, match="mean must be 3"):
        preprocess_images(image, 8, mean=(0.5, 0.5))


# ---- hostile and unusual files ------------------------------------------------------------------------------

POSTSCRIPT = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nnewpath 0 0 moveto 10 10 lineto stroke\nshowpage\n"


@pytest.mark.parametrize("content", [POSTSCRIPT, b"%PDF-1.4\n1 0 obj <<>> endobj\n", b"<svg xmlns='x'/>"])
def test_only_raster_formats_are_decoded_whatever_the_name(tmp_path, content, monkeypatch):
    from PIL import EpsImagePlugin
    monkeypatch.setattr(EpsImagePlugin, "Ghostscript", lambda *a, **k: pytest.fail("Ghostscript was reached"))
    path = tmp_path / "photo.png"
    path.write_bytes(content)
    with pytest.raises(NevaImageError, match=r"photo\.png' is not a PNG, JPEG, WEBP, GIF, BMP or TIFF image"):
        preprocess_images(path, 32)


@pytest.mark.parametrize("suffix", [".jpg", ".webp", ".gif", ".bmp", ".tiff"])
def test_every_listed_raster_format_is_read(tmp_path, suffix):
    path = tmp_path / f"photo{suffix}"
    random_image(40, 30).save(path)
    assert preprocess_images(path, 16).shape == (1, 3, 16, 16)


def test_16_bit_grayscale_png_is_rescaled_not_clipped_white(tmp_path):
    levels = np.array([[0, 257 * 64, 257 * 128, 65535]], dtype=np.uint16).repeat(4, axis=0).repeat(4, axis=1)
    path = tmp_path / "deep.png"
    Image.fromarray(levels).save(path)
    assert Image.open(path).mode == "I;16"  # a real 16-bit file, as a scanner or a microscope writes
    eight_bit = Image.fromarray((levels // 257).astype(np.uint8)).convert("RGB")
    assert_matches(preprocess_images(path, 16), preprocess_images(eight_bit, 16))


def test_float_tiff_is_rescaled_not_clipped_black(tmp_path):
    values = np.linspace(0.0, 1.0, 64, dtype=np.float32).reshape(8, 8)
    path = tmp_path / "float.tiff"
    Image.fromarray(values).save(path)
    assert Image.open(path).mode == "F"
    eight_bit = Image.fromarray(np.rint(values.astype(np.float64) * 255).astype(np.uint8)).convert("RGB")
    assert_matches(preprocess_images(path, 8), preprocess_images(eight_bit, 8))


@pytest.mark.parametrize("values, message", [
    (np.full((4, 4), 1.5, np.float32), r"has F samples in \[1\.5, 1\.5\]; expected \[0, 1\]"),
    (np.full((4, 4), np.nan, np.float32), r"has F samples in \[nan, nan\]"),
    (np.full((4, 4), -7, np.int32), r"has I samples in \[-7\.0, -7\.0\]; expected \[0, 65535\]"),
    (np.full((4, 4), 70000, np.int32), r"has I samples in \[70000\.0, 70000\.0\]"),
])
def test_wide_samples_out_of_range_are_refused(tmp_path, values, message):
    path = tmp_path / "odd.tiff"
    Image.fromarray(values).save(path)
    with pytest.raises(NevaImageError, match=r"image file '.*odd\.tiff' " + message):
        preprocess_images(path, 8)
    with pytest.raises(NevaValueError, match=r"images\[0\] " + message):
        preprocess_images([Image.open(path)], 8)


def test_a_decompression_bomb_is_refused_before_decoding(tmp_path):
    path = tmp_path / "bomb.png"
    Image.new("1", (10_000, 9_000)).save(path)  # 90 million pixels in a few kilobytes
    with pytest.raises(NevaImageError, match=r"bomb\.png.*exceeds limit"):
        preprocess_images(path, 32)


@pytest.mark.parametrize("width, height, image_size", [(13, 1000, 40), (1000, 13, 40), (3, 500, 37), (517, 9, 64)])
def test_extreme_aspect_ratios_resize_only_the_crop_and_stay_within_1_in_255(width, height, image_size):
    image = random_image(width, height)
    ours, reference = preprocess_images(image, image_size), hf_pixels(image, image_size)
    samples = (ours - reference) * torch.tensor(CLIP_STD).view(1, 3, 1, 1) * 255  # back to 0..255 steps
    assert samples.abs().max() <= 2.0 + 1e-3 and (samples.abs() > 0.5).float().mean() < 0.01


@pytest.mark.parametrize("size", [(1, 1_000_000), (1_000_000, 1)])
def test_a_one_pixel_wide_million_pixel_png_stays_cheap(tmp_path, size):
    """Resizing all of it would take 336 x 336,000,000 pixels (about 9 GB); only the crop's region is resized."""
    path = tmp_path / "line.png"
    Image.new("RGB", size, (200, 30, 90)).save(path)
    assert path.stat().st_size < 10_000
    script = (f"import resource, time; from neva_model.image import preprocess_images\n"
              f"before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
              f"start = time.process_time(); pixels = preprocess_images({str(path)!r}, 336)\n"
              f"print(time.process_time() - start, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before, "
              f"pixels.shape == (1, 3, 336, 336), float((pixels.amax((2, 3)) - pixels.amin((2, 3))).max()))")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=300,
                         cwd=Path(__file__).resolve().parents[2]).stdout.split()
    seconds, peak_growth_kib, shape_ok, spread = float(out[0]), int(out[1]), out[2] == "True", float(out[3])
    assert shape_ok and spread == 0.0  # one colour in, one colour out
    assert peak_growth_kib < 100 * 1024, f"peak memory grew by {peak_growth_kib / 1024:.0f} MiB"  # the image: 3 MB
    assert seconds < 10, f"{seconds:.1f} s of CPU"
