"""The model stack on a CUDA GPU: low-precision accuracy by the tolerance rule, and a CUDA-graph decode step."""
import pytest
import torch
from transformers import LlavaForConditionalGeneration

from neva_model import Engine, Request, SamplingParams, load_neva

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


def test_the_decode_step_replays_in_a_cuda_graph(tmp_path):
    case = PARITY_CASES[0]
    build_hf_model(case).save_pretrained(tmp_path)
    model = load_neva(tmp_path, dtype=torch.bfloat16, device="cuda")
    engine = Engine(model, max_batch_size=4, max_seq_len=64, block_size=8)
    generator = torch.Generator().manual_seed(1)
    requests = [Request(random_prompt(case, n, image_at=1, generator=generator),
                        torch.randn(1, 3, IMAGE_SIZE, IMAGE_SIZE, generator=generator), SamplingParams(max_new_tokens=6))
                for n in (3, 10)]
    engine.generate(requests)  # leaves the last step's inputs in the step tensors and its K/V in the cache
    with torch.inference_mode():
        eager = engine.decode_forward().clone()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            engine.decode_forward()  # warm-up: kernels compiled and autotuned outside the capture
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            captured = engine.decode_forward()
        graph.replay()
        torch.cuda.synchronize()
    torch.testing.assert_close(captured, eager)


def test_the_engine_gives_the_same_tokens_with_and_without_a_cuda_graph(tmp_path):
    case = PARITY_CASES[1]
    build_hf_model(case).save_pretrained(tmp_path)
    model = load_neva(tmp_path, dtype=torch.bfloat16, device="cuda")
    generator = torch.Generator().manual_seed(2)
    requests = [Request(random_prompt(case, n, image_at=2, generator=generator),
                        torch.randn(1, 3, IMAGE_SIZE, IMAGE_SIZE, generator=generator),
                        SamplingParams(max_new_tokens=12, temperature=0.9, top_p=0.9, seed=n)) for n in (2, 7, 5)]
    runs = [Engine(model, max_batch_size=2, max_seq_len=64, block_size=4, cuda_graph=graph).generate(requests)
            for graph in (False, True)]
    assert [c.token_ids for c in runs[0]] == [c.token_ids for c in runs[1]]
