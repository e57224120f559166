"""The `neva` command: `neva ask [--model DIR] --image IMG "question"` answers a question about images.

Without --model it asks the default model shipped in the package (DEFAULT_MODEL: neva's own small NeVA trained
on a shapes task by `python -m neva_model.train`).

The answer goes to stdout (streamed with --stream), the timing line to stderr, errors to stderr with exit
status 1.
"""
from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

import torch

import neva_kernels
from neva_kernels import NevaError

from .generate import Engine, Request, StepOutput, Timings
from .image import checkpoint_image_stats, preprocess_images
from .prompts import STEERLM_ATTRIBUTE_ORDER, SteerLMAttributes, build_prompt
from .model import Neva
from .sampling import SamplingParams
from .server.images import ImageLimits
from .tokenizer import NevaTokenizer, load_tokenizer, model_input_ids
from .weights import DTYPES, load_neva

DEFAULT_MODEL = Path(__file__).parent / "checkpoints" / "neva-shapes"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="neva", description="NeVA visual question answering on neva_kernels")
    commands = parser.add_subparsers(dest="command", required=True)
    ask = commands.add_parser("ask", help="answer a question about one or more images")
    ask.add_argument("question")
    _add_model_arguments(ask)
    ask.add_argument("--image", action="append", required=True, help="image file (repeat for several)")
    ask.add_argument("--system", help="system text put before the conversation")
    ask.add_argument("--stream", action="store_true", help="print the answer token by token")

    sampling = ask.add_argument_group("sampling")
    sampling.add_argument("--max-new-tokens", type=int, default=256)
    sampling.add_argument("--temperature", type=float, default=0.0, help="0 is greedy")
    sampling.add_argument("--top-k", type=int, default=0, help="0 is no limit")
    sampling.add_argument("--top-p", type=float, default=1.0)
    sampling.add_argument("--seed", type=int)
    sampling.add_argument("--stop", action="append", default=[], help="stop string (repeat for several)")
    sampling.add_argument("--ignore-eos", action="store_true")

    steer = ask.add_argument_group("SteerLM (NeMo NeVA's attribute-conditioned prompt)")
    steer.add_argument("--steerlm", action="store_true",
                       help="use the SteerLM prompt with NeVA's default attributes; any attribute below implies it")
    for name in STEERLM_ATTRIBUTE_ORDER:
        steer.add_argument(f"--{name.replace('_', '-')}", type=int, metavar="0-9")

    serve = commands.add_parser("serve", help="an OpenAI-compatible HTTP server (POST /v1/chat/completions)")
    _add_model_arguments(serve)
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--served-model-name", help="the model name clients send (default: the --model folder's name)")
    serve.add_argument("--max-batch-size", type=int, default=16, help="requests decoded together")
    serve.add_argument("--max-queue", type=int, default=256,
                       help="requests that may wait for a batch slot; more are refused with HTTP 429")
    serve.add_argument("--max-seq-len", type=int, help="longest prompt + answer (default: min(2048, the model's))")
    serve.add_argument("--allow-remote-images", action="store_true", help="fetch http(s) image URLs")
    serve.add_argument("--max-image-bytes", type=int, default=ImageLimits.max_bytes)
    serve.add_argument("--max-image-pixels", type=int, default=ImageLimits.max_pixels)
    serve.add_argument("--shutdown-timeout", type=float, default=30.0,
                       help="seconds in-flight requests get to finish after SIGTERM before they are aborted")
    return parser


def _add_model_arguments(command: argparse.ArgumentParser) -> None:
    command.add_argument("--model", type=Path, default=DEFAULT_MODEL,
                         help="llava-hf checkpoint directory (default: the shipped neva-shapes model)")
    run = command.add_argument_group("runtime")
    run.add_argument("--backend", choices=neva_kernels.BACKENDS, help="force one neva_kernels backend")
    run.add_argument("--dtype", choices=sorted(DTYPES), help="default: bfloat16 on CUDA, float32 on CPU")
    run.add_argument("--device", help="default: cuda when available, else cpu")
    run.add_argument("--block-size", type=int, default=16, help="tokens per KV-cache block")
    run.add_argument("--cuda-graph", action=argparse.BooleanOptionalAction, default=None,
                     help="replay decode steps from CUDA graphs (default: on CUDA devices)")


def _steerlm(args) -> SteerLMAttributes | None:
    given = {name: getattr(args, name) for name in STEERLM_ATTRIBUTE_ORDER if getattr(args, name) is not None}
    return SteerLMAttributes(**given) if args.steerlm or given else None


def timing_line(t: Timings) -> str:
    return (f"vision {t.vision_s * 1e3:.1f} ms | projection {t.projection_s * 1e3:.1f} ms | prefill "
            f"{t.prefill_tokens} tokens {t.prefill_s * 1e3:.1f} ms | decode {t.decode_tokens} tokens "
            f"{t.decode_tokens_per_s:.1f} tokens/s")


def _load(args) -> tuple[Neva, NevaTokenizer]:
    """The model and tokenizer of --model on the device and dtype asked for (the backend set first)."""
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = DTYPES[args.dtype] if args.dtype else (torch.bfloat16 if device.type == "cuda" else torch.float32)
    return load_neva(args.model, dtype=dtype, device=device), load_tokenizer(args.model)


def ask(args) -> str:
    model, tokenizer = _load(args)
    config = model.config
    images = preprocess_images(args.image, config.vision.image_size, *checkpoint_image_stats(args.model))
    prompt = build_prompt(args.question, steerlm=_steerlm(args), system=args.system, num_images=len(args.image))
    ids = model_input_ids(tokenizer, prompt, config, len(args.image))
    room = config.text.max_position_embeddings - len(ids)
    if room < 1:
        raise NevaError(f"the prompt takes {len(ids)} tokens, the model's context only "
                        f"{config.text.max_position_embeddings}")
    # As any generator, stop at the end of the model's context rather than refuse the question.
    max_new_tokens = min(args.max_new_tokens, room)
    sampling = SamplingParams(max_new_tokens=max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                              top_p=args.top_p, seed=args.seed, stop=tuple(args.stop), ignore_eos=args.ignore_eos)
    engine = Engine(model, max_batch_size=1, block_size=args.block_size, cuda_graph=args.cuda_graph,
                    max_seq_len=len(ids) + max_new_tokens, detokenize=tokenizer.decode_generated)

    def stream(_, output: StepOutput) -> None:
        print(output.text, end="", flush=True)

    completion = engine.generate([Request(ids, images, sampling)], stream if args.stream else None)[0]
    print("" if args.stream else completion.text)
    print(timing_line(engine.timings), file=sys.stderr)
    return completion.text


def serve(args) -> None:
    from .server.app import serve  # FastAPI and uvicorn load for this command only
    from .server.chat import Served

    model, tokenizer = _load(args)
    engine = Engine(model, max_batch_size=args.max_batch_size, max_seq_len=args.max_seq_len,
                    block_size=args.block_size, max_waiting=args.max_queue, cuda_graph=args.cuda_graph,
                    detokenize=tokenizer.decode_generated)
    limits = ImageLimits(args.max_image_bytes, args.max_image_pixels, args.allow_remote_images)
    served = Served(engine, tokenizer, *checkpoint_image_stats(args.model), limits)
    serve(served, args.served_model_name or args.model.resolve().name, args.host, args.port, args.shutdown_timeout)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        # Scoped: a caller of main() (tests, a notebook) keeps its own backend setting afterwards.
        backend = getattr(args, "backend", None)
        with neva_kernels.use_backend(backend) if backend else contextlib.nullcontext():
            {"ask": ask, "serve": serve}[args.command](args)
    except (NevaError, OSError) as error:
        print(f"neva: error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
