"""CLIP image preprocessing for NeVA: files, PIL images or tensors in, normalized pixel batches out.

The steps are those of Hugging Face's CLIP image processor on its PIL path (the one LLaVA and NeVA were trained
with): convert to RGB (transparency composited onto white), resize the shortest side to `image_size` with PIL's
bicubic filter, center crop `image_size` x `image_size`, scale to [0, 1], normalize with CLIP's mean and std.
An image whose resized copy would exceed 32 crops (aspect ratios past 32:1) has only the region the crop keeps
resized, so a 1 x 1,000,000 image costs what a square one does; below that, the whole image is resized as Hugging
Face does, bit for bit.

Files are opened as raster formats only (RASTER_FORMATS): PIL would otherwise pick a decoder from the content,
and a PostScript file named .png would reach Ghostscript. Samples wider than 8 bits (16-bit and 32-bit integer,
float) are rescaled to 8 bits, which PIL's own conversion would clip (a 16-bit photo white, a float one black).
"""
from __future__ import annotations

import math
import os
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from neva_kernels.errors import NevaError, NevaTypeError, NevaValueError

from .config import NevaConfigError, read_json_object

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
RASTER_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF")

ImageInput = str | os.PathLike | Image.Image | torch.Tensor


class NevaImageError(NevaError, ValueError):
    """An image file is missing, unreadable or corrupt; the message names the file and the cause."""


def preprocess_images(
    images: ImageInput | Iterable[ImageInput],
    image_size: int,
    mean: Sequence[float] = CLIP_MEAN,
    std: Sequence[float] = CLIP_STD,
) -> torch.Tensor:
    """Return the CLIP pixel values of `images` as a float32 tensor [N, 3, image_size, image_size].

    `images` is one image or an iterable of them; each is a path (str / os.PathLike), a PIL image, or a tensor
    [3, H, W] or [N, 3, H, W] holding uint8 values 0..255 or floats in [0, 1] (floats are quantized to uint8 the
    way Hugging Face does before PIL resizes them). A tensor [N, 3, H, W] contributes N images.
    """
    _check_image_size(image_size)
    mean_t = _channel_stats(mean, "mean", positive=False)
    std_t = _channel_stats(std, "std", positive=True)
    crops = [_resize_and_center_crop(image, image_size) for image in _rgb_images(images)]
    if not crops:
        return torch.empty(0, 3, image_size, image_size, dtype=torch.float32)
    pixels = torch.from_numpy(np.stack([np.asarray(crop) for crop in crops]))  # [N, S, S, 3] uint8
    # float64 scaling then float32, as Hugging Face's rescale does, so both agree to the last bits.
    scaled = pixels.permute(0, 3, 1, 2).to(torch.float64).mul(1.0 / 255.0).to(torch.float32)
    return scaled.sub_(mean_t.view(1, 3, 1, 1)).div_(std_t.view(1, 3, 1, 1)).contiguous()


def checkpoint_image_stats(model_dir: str | os.PathLike) -> tuple[Sequence[float], Sequence[float]]:
    """Mean and std from the checkpoint's preprocessor_config.json when it has one, else CLIP's."""
    path = Path(model_dir) / "preprocessor_config.json"
    config = read_json_object(path) if path.is_file() else {}
    mean, std = config.get("image_mean", CLIP_MEAN), config.get("image_std", CLIP_STD)
    try:
        _channel_stats(mean, "image_mean", positive=False), _channel_stats(std, "image_std", positive=True)
    except NevaError as error:
        raise NevaConfigError(f"{path}: {error}") from None
    return mean, std


def _check_image_size(image_size) -> None:
    if isinstance(image_size, bool) or not isinstance(image_size, int):
        raise NevaTypeError(f"image_size must be an int, got {type(image_size).__name__}")
    if image_size < 1:
        raise NevaValueError(f"image_size must be >= 1, got {image_size}")


def _channel_stats(values, name: str, positive: bool) -> torch.Tensor:
    try:
        stats = [float(v) for v in values]
    except (TypeError, ValueError) as error:
        raise NevaTypeError(f"{name} must be 3 numbers (one per RGB channel), got {values!r}") from error
    if len(stats) != 3 or not all(math.isfinite(v) for v in stats):
        raise NevaValueError(f"{name} must be 3 finite numbers (one per RGB channel), got {values!r}")
    if positive and min(stats) <= 0:
        raise NevaValueError(f"{name} must be positive, got {values!r}")
    return torch.tensor(stats, dtype=torch.float32)


def _rgb_images(images) -> list[Image.Image]:
    """Flatten the accepted inputs into a list of RGB PIL images, naming each input in errors."""
    if isinstance(images, (str, os.PathLike, Image.Image, torch.Tensor)):
        return _rgb_images_of(images, "images")
    try:
        items = list(images)
    except TypeError as error:
        raise NevaTypeError(
            f"images must be a path, a PIL image, a tensor or an iterable of them, got {type(images).__name__}"
        ) from error
    return [rgb for index, item in enumerate(items) for rgb in _rgb_images_of(item, f"images[{index}]")]


def _rgb_images_of(item, name: str) -> list[Image.Image]:
    if isinstance(item, (str, os.PathLike)):
        return [_open_image_file(item)]
    if isinstance(item, Image.Image):
        return [_to_rgb(item, name)]
    if isinstance(item, torch.Tensor):
        return _tensor_to_images(item, name)
    raise NevaTypeError(f"{name} must be a path, a PIL image or a torch.Tensor, got {type(item).__name__}")


def _open_image_file(path) -> Image.Image:
    name = repr(os.fspath(path))
    try:
        with warnings.catch_warnings():
            # Past MAX_IMAGE_PIXELS PIL only warns (an error past twice that): refuse there, before decoding.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path, formats=RASTER_FORMATS) as image:
                image.load()  # PIL decodes lazily: force it here so corrupt data fails inside this try
                return _to_rgb(image, f"image file {name}")
    except FileNotFoundError as error:
        raise NevaImageError(f"image file {name} does not exist") from error
    except UnidentifiedImageError as error:
        raise NevaImageError(f"image file {name} is not a {', '.join(RASTER_FORMATS[:-1])} or "
                             f"{RASTER_FORMATS[-1]} image") from error
    except NevaValueError as error:  # samples out of range: the message names the file already
        raise NevaImageError(str(error)) from error
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise NevaImageError(f"cannot read image file {name}: {error}") from error


def _to_rgb(image: Image.Image, name: str) -> Image.Image:
    """RGB with any transparency composited onto white (what transformers' convert_to_rgb does)."""
    image = _to_8_bits(image, name)
    if "A" in image.getbands() or "transparency" in image.info:
        white = Image.new("RGBA", image.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, image.convert("RGBA")).convert("RGB")
    return image.convert("RGB")


def _to_8_bits(image: Image.Image, name: str) -> Image.Image:
    """Grayscale of 16 or 32-bit integers or of floats as 8-bit "L": integers as 16-bit samples (0..65535, what
    PNG and TIFF store in these modes), floats as [0, 1]; values outside those ranges are refused."""
    if image.mode not in ("I", "F") and not image.mode.startswith("I;16"):
        return image
    values = np.asarray(image).astype(np.float64)
    top = 1.0 if image.mode == "F" else 65535.0
    if values.size and not (np.isfinite(values).all() and values.min() >= 0 and values.max() <= top):
        raise NevaValueError(f"{name} has {image.mode} samples in [{values.min()}, {values.max()}]; "
                             f"expected [0, {top:g}]")
    return Image.fromarray(np.rint(values * (255.0 / top)).astype(np.uint8))

def _tensor_to_images(tensor: torch.Tensor, name: str) -> list[Image.Image]:
    if tensor.dim() not in (3, 4) or tensor.shape[-3] != 3:
        raise NevaValueError(f"{name} must have shape [3, H, W] or [N, 3, H, W], got {list(tensor.shape)}")
    if tensor.shape[-1] == 0 or tensor.shape[-2] == 0:
        raise NevaValueError(f"{name} has an empty spatial size {list(tensor.shape[-2:])}")
    batch = tensor.detach().to("cpu").reshape(-1, *tensor.shape[-3:])
    if batch.dtype.is_floating_point:
        if not bool(torch.isfinite(batch).all()):
            raise NevaValueError(f"{name} contains NaN or infinite values")
        if batch.numel() and (float(batch.min()) < 0.0 or float(batch.max()) > 1.0):
            raise NevaValueError(
                f"{name} is a float tensor with values in [{float(batch.min())}, {float(batch.max())}]; "
                "float images must lie in [0, 1] (pass uint8 for 0..255)"
            )
        # Hugging Face multiplies by 255 in float64, rounds to float32 and truncates to uint8: do the same.
        batch = batch.to(torch.float64).mul(255.0).to(torch.float32).to(torch.uint8)
    elif batch.dtype != torch.uint8:
        raise NevaTypeError(f"{name} must be uint8 (0..255) or floating point (0..1), got {batch.dtype}")
    hwc = batch.permute(0, 2, 3, 1).contiguous().numpy()
    return [Image.fromarray(frame) for frame in hwc]


# Up to this many times the crop's pixels, resize the whole image as Hugging Face does (bit-exact with it).
_WHOLE_RESIZE_LIMIT = 32


def _resize_and_center_crop(image: Image.Image, size: int) -> Image.Image:
    width, height = image.size
    # Shortest side to `size`, longest side truncated as Hugging Face's get_resize_output_image_size does.
    if width <= height:
        new_width, new_height = size, int(size * height / width)
    else:
        new_width, new_height = int(size * width / height), size
    top, left = (new_height - size) // 2, (new_width - size) // 2
    if new_width * new_height <= _WHOLE_RESIZE_LIMIT * size * size:
        resized = image.resize((new_width, new_height), resample=Image.Resampling.BICUBIC)
        return resized.crop((left, top, left + size, top + size))
    return _resize_region(image, (left, top, left + size, top + size), width / new_width, height / new_height)


def _resize_region(image: Image.Image, crop: tuple[int, int, int, int], x_scale: float, y_scale: float) -> Image.Image:
    """The `crop` of the image resized by 1 / (x_scale, y_scale), computing only the crop's pixels.

    Two passes in the order of PIL's whole-image resize (horizontal, then vertical), so the result differs from
    it only by the float rounding of filter positions (a few samples in a thousand, by 1 or 2 in 255); PIL's own
    box resize may run the vertical pass first, which clips the intermediate differently.
    """
    size_x, size_y = crop[2] - crop[0], crop[3] - crop[1]
    x0, x1 = crop[0] * x_scale, min(image.width, crop[2] * x_scale)
    y0, y1 = crop[1] * y_scale, min(image.height, crop[3] * y_scale)
    reach = 2 * max(y_scale, 1.0) + 1  # the bicubic filter's support in source rows, plus one
    first, last = max(0, math.floor(y0 - reach)), min(image.height, math.ceil(y1 + reach))
    rows = image.crop((0, first, image.width, last))  # the rows the vertical pass reads, whole (horizontal reach)
    strip = rows.resize((size_x, last - first), Image.Resampling.BICUBIC, box=(x0, 0, x1, last - first))
    return strip.resize((size_x, size_y), Image.Resampling.BICUBIC, box=(0, y0 - first, size_x, y1 - first))
