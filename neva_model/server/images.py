"""Images of a chat request: ``data:`` URLs (base64 PNG / JPEG / WebP) decoded with limits on bytes and pixels.

Remote http(s) URLs are fetched only when the server was started with --allow-remote-images; the same limits
apply to what they return.
"""
from __future__ import annotations

import base64
import binascii
import io
import urllib.request
from dataclasses import dataclass

from PIL import Image

from .errors import bad_request

FORMATS = {"image/png": "PNG", "image/jpeg": "JPEG", "image/jpg": "JPEG", "image/webp": "WEBP"}
REMOTE_TIMEOUT_S = 10


@dataclass(frozen=True)
class ImageLimits:
    max_bytes: int = 20 * 2**20  # encoded size
    max_pixels: int = 4096 * 4096  # width x height, read from the header before decoding
    allow_remote: bool = False


def load_image(url: str, limits: ImageLimits, param: str) -> Image.Image:
    """The decoded image at `url` (a data: URL, or http(s) when allowed); APIError 400 on anything else."""
    if url.startswith("data:"):
        data = _data_url_bytes(url, limits, param)
    elif url.startswith(("http://", "https://")):
        if not limits.allow_remote:
            raise bad_request(f"{param}: remote image URLs are not fetched by this server (it was started without "
                              "--allow-remote-images); send the image as a data: URL with base64 PNG, JPEG or "
                              "WebP", param, "remote_image_refused")
        data = _fetch(url, limits, param)
    else:
        raise bad_request(f"{param}: expected a data: URL (data:image/png;base64,...), got {url[:40]!r}", param)
    return _decode(data, limits, param)


def _data_url_bytes(url: str, limits: ImageLimits, param: str) -> bytes:
    header, comma, payload = url.partition(",")
    media_type, _, encoding = header[len("data:"):].partition(";")
    if not comma or encoding != "base64" or media_type.lower() not in FORMATS:
        raise bad_request(f"{param}: expected data:image/png|jpeg|webp;base64,..., got {header[:60]!r}", param)
    if len(payload) * 3 // 4 > limits.max_bytes:
        raise bad_request(f"{param}: the image is about {len(payload) * 3 // 4} bytes, the limit is "
                          f"{limits.max_bytes}", param, "image_too_large")
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as error:
        raise bad_request(f"{param}: the base64 data cannot be decoded: {error}", param) from error


def _fetch(url: str, limits: ImageLimits, param: str) -> bytes:
    try:
        with urllib.request.urlopen(url, timeout=REMOTE_TIMEOUT_S) as response:
            data = response.read(limits.max_bytes + 1)
    except (OSError, ValueError) as error:
        raise bad_request(f"{param}: cannot fetch {url[:80]!r}: {error}", param) from error
    if len(data) > limits.max_bytes:
        raise bad_request(f"{param}: the image at {url[:80]!r} is over the limit of {limits.max_bytes} bytes",
                          param, "image_too_large")
    return data


def _decode(data: bytes, limits: ImageLimits, param: str) -> Image.Image:
    try:
        with Image.open(io.BytesIO(data), formats=sorted(set(FORMATS.values()))) as image:
            width, height = image.size
            if width * height > limits.max_pixels:
                raise bad_request(f"{param}: the image is {width}x{height} pixels, the limit is {limits.max_pixels} "
                                  "pixels", param, "image_too_large")
            image.load()
            return image.copy()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise bad_request(f"{param}: the image cannot be decoded as PNG, JPEG or WebP: {error}", param) from error
