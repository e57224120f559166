"""The seed project's usage of Neva, and what a dtype cast must not change."""
import pytest
import torch

from neva_kernels import NevaTypeError, NevaValueError
from neva_model import Neva, NevaConfig

pytestmark = pytest.mark.usefixtures("single_thread")


def test_default_model_answers_images_and_captions_with_image_tokens_first():
    model = Neva().eval()
    config = model.config
    images = torch.randn(2, 3, config.vision.image_size, config.vision.image_size)
    captions = torch.randint(0, config.image_token_index, (2, 7))
    with torch.no_grad():
        logits = model(images, captions)
        text_only = model.forward_expanded(captions)
    assert logits.shape == (2, config.image_tokens_per_image + 7, config.text.vocab_size)
    assert torch.isfinite(logits).all()
    # the image changes what follows it: the caption's logits differ from the text-only run
    assert not torch.allclose(logits[:, config.image_tokens_per_image:], text_only)


def test_a_bfloat16_cast_keeps_rope_angles_in_float32():
    model = Neva().to(torch.bfloat16)
    assert model.language_model.rope_cache(torch.device("cpu")).dtype == torch.float32


def test_the_seed_readme_usage_returns_logits():
    """The seed project's README, verbatim: a 256 x 256 image and one caption token."""
    logits = Neva()(torch.randn(1, 3, 256, 256), torch.randint(0, 4, (1, 1)))
    config = NevaConfig.from_name("tiny")
    assert logits.shape == (1, config.image_tokens_per_image + 1, config.text.vocab_size)
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("shape", [(1, 3, 224, 224), (1, 3, 256, 255), (1, 4, 256, 256), (3, 256, 256)])
def test_an_image_of_another_size_is_refused_everywhere_naming_both_sizes(shape):
    model = Neva().eval()
    images, caption = torch.randn(shape), torch.randint(0, 4, (1, 3))
    expected = rf"must have shape \[images, 3, 256, 256\] \(the model's image_size is 256\), got \{list(shape)}"
    with pytest.raises(NevaValueError, match=r"Neva: 'images' " + expected):
        model(images, caption)
    with pytest.raises(NevaValueError, match=r"Neva: 'pixel_values' " + expected):
        model.forward_expanded(caption, images)
    with pytest.raises(NevaValueError, match=r"VisionTower: 'pixel_values' " + expected):
        model.vision_tower(images, (-2,))


def test_forward_arguments_are_checked():
    model = Neva().eval()
    images = torch.randn(2, 3, 256, 256)
    with pytest.raises(NevaValueError, match=r"'caption_tokens' must have shape \[2 \(one row per image\), tokens\], "
                                             r"got \[1, 3\]"):
        model(images, torch.randint(0, 4, (1, 3)))
    with pytest.raises(NevaTypeError, match=r"'caption_tokens' must be an integer tensor, got torch.float32"):
        model(images, torch.rand(2, 3))
    with pytest.raises(NevaTypeError, match=r"'images' must be a floating-point tensor, got torch.uint8"):
        model(images.to(torch.uint8), torch.randint(0, 4, (2, 3)))
    with pytest.raises(NevaValueError, match=r"'input_ids' must have shape \[batch, tokens\], got \[3\]"):
        model.forward_expanded(torch.randint(0, 4, (3,)))
