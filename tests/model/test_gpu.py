"""The model stack on a CUDA GPU: low-precision accuracy by the tolerance rule (CUDA graphs: test_cuda_graphs)."""
import pytest
import torch
from transformers import LlavaForConditionalGeneration

from neva_model import load_neva

from tests.helpers import assert_close_by_rule
from tests.model.tiny_llava import IMAGE_SIZE, PARITY_CASES, build_hf_model, random_prompt

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("case", PARITY_CASES[:3], ids=lambda c: c.name)
def test_low_precision_logits_on_gpu_follow_the_tolerance_rule(case, dtype, tmp_path):
    hf = build_hf_model(case)
    hf.save_pretrained(tmp_path)
    model = load_neva(tmp_path, dtype=dtype, device="cuda")
    input_ids = torch.tensor([random_prompt(case, 9, image_at=3, generator=torch.Generator().manual_seed(0))])
    pixel_values = torch.randn(1, 3, IMAGE_SIZE, IMAGE_SIZE)
    # transformers in the same dtype is the baseline, read from the file (a cast would round its RoPE frequencies)
    hf_low = LlavaForConditionalGeneration.from_pretrained(tmp_path, dtype=dtype).to("cuda").eval()
    with torch.no_grad():
        truth = hf.double()(input_ids=input_ids, pixel_values=pixel_values.double()).logits
        baseline = hf_low(input_ids=input_ids.cuda(), pixel_values=pixel_values.cuda().to(dtype)).logits
        logits = model.forward_expanded(input_ids.cuda(), pixel_values.cuda())
    assert_close_by_rule(logits.cpu(), truth, baseline.cpu(), f"{case.name} {dtype}")
