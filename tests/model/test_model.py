"""The seed project's usage of Neva, and what a dtype cast must not change."""
import pytest
import torch

from neva_model import Neva

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
