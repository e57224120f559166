"""The `neva` command: `neva ask [--model DIR] --image IMG "question"` answers a question about images.

Without --model it asks the default model shipped in the package (DEFAULT_MODEL: neva's own small NeVA trained
on a shapes task by `python -m neva_model.train`).

The answer goes to stdout (streamed with --stream), the timing line to stderr. Every failure is one line on
stderr, ``neva: error: ...``, from the one error boundary in main(): exit status 2 for a malformed argument,
130 for Ctrl-C, 1 otherwise. torch and the model stack are imported inside that boundary (in the functions
below); main() reads NEVA_KERNELS_BACKEND first, so a bad value is refused before any work.
"""
from __future__ import annotations

import argparse
import contextlib
import math
import os
import re
import sys
import traceback
from pathlib import Path

DEFAULT_MODEL = Path(__file__).parent / "checkpoints" / "neva-shapes"


class UsageError(Exception):
    """A command-line argument is malformed; the message names it (exit status 2, as argparse's own)."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse would print its usage and exit; main() prints one line instead
        raise UsageError(message)


def _int_at_least(minimum: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an int >= {minimum}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected an int >= {minimum}, got {value}")
        return value
    parse.__name__ = f"int >= {minimum}"
    return parse


def _finite(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def _fraction(text: str) -> float:
    value = _finite(text)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"expected a fraction in [0, 1), got {text!r}")
    return value


# Decimal (SI) and binary units: a GPU sold as "80 GB" has 80 GiB, of which the driver keeps a little.
_BYTE_UNITS = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
               "KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "TiB": 2**40}
_SIZE = re.compile(r"\s*([0-9]*\.?[0-9]+)\s*([A-Za-z]+)\s*")


def _memory_size(text: str) -> int:
    """'80GB', '79.6 GiB', '141gb' -> bytes (> 0); a bare number is refused: its unit would be a guess."""
    match = _SIZE.fullmatch(text)
    factor = {u.lower(): f for u, f in _BYTE_UNITS.items()}.get(match[2].lower()) if match else None
    if factor is None or not math.isfinite(float(match[1])):
        raise argparse.ArgumentTypeError(f"expected a size such as 80GB or 80GiB (units: {', '.join(_BYTE_UNITS)}), "
                                         f"got {text!r}")
    size = int(float(match[1]) * factor)
    if size < 1:
        raise argparse.ArgumentTypeError(f"expected a positive size, got {text!r}")
    return size


def _utf8(text: str) -> str:
    """Text from the command line; bytes that are not UTF-8 arrive as lone surrogates (PEP 383) and are refused."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        byte = ord(text[error.start]) - 0xDC00
        raise argparse.ArgumentTypeError(f"is not valid UTF-8 (byte {byte:#04x} at character {error.start})") \
            from None
    return text


def _device(text: str):
    """cpu, cuda or cuda:N, and only a CUDA device that exists (the kernels run on nothing else)."""
    import torch

    try:
        device = torch.device(text)
    except RuntimeError:
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise argparse.ArgumentTypeError(f"expected cpu, cuda or cuda:N, got {text!r}")
    if device.type == "cuda":
        count = torch.cuda.device_count()
        if count == 0:
            raise argparse.ArgumentTypeError(f"{text!r} asked for, but torch sees no CUDA GPU here")
        if (device.index or 0) >= count:
            raise argparse.ArgumentTypeError(f"{text!r} asked for, but torch sees only {count} CUDA GPU(s)")
    return device


def _parser() -> argparse.ArgumentParser:
    from .plan import WEIGHT_DTYPES
    from .prompts import STEERLM_ATTRIBUTE_ORDER
    from .server.images import ImageLimits
    from .sizing import DTYPE_BYTES

    parser = _Parser(prog="neva", description="NeVA visual question answering on neva_kernels")
    commands = parser.add_subparsers(dest="command", required=True)
    ask = commands.add_parser("ask", help="answer a question about one or more images")
    ask.add_argument("question", type=_utf8)
    _add_model_arguments(ask)
    ask.add_argument("--image", action="append", required=True, help="image file (repeat for several)")
    ask.add_argument("--system", type=_utf8, help="system text put before the conversation")
    ask.add_argument("--stream", action="store_true", help="print the answer token by token")

    sampling = ask.add_argument_group("sampling")
    sampling.add_argument("--max-new-tokens", type=_int_at_least(1), default=256)
    sampling.add_argument("--temperature", type=_finite, default=0.0, help="0 is greedy")
    sampling.add_argument("--top-k", type=_int_at_least(0), default=0, help="0 is no limit")
    sampling.add_argument("--top-p", type=_finite, default=1.0)
    sampling.add_argument("--seed", type=int)
    sampling.add_argument("--stop", type=_utf8, action="append", default=[], help="stop string (repeat for several)")
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

    planner = commands.add_parser("plan", help="per-GPU memory of a model split by tensor parallelism over N GPUs "
                                               "(sizes computed from its configuration; nothing is loaded)")
    planner.add_argument("--model", required=True,
                         help="a preset (e.g. neva-43b-class-nemotron) or a llava-hf checkpoint directory, of which "
                              "only config.json is read (./NAME for a directory named as a preset)")
    planner.add_argument("--gpus", type=_int_at_least(1), nargs="+", required=True,
                         help="tensor-parallel GPU counts, one table row each (e.g. 1 2 4)")
    planner.add_argument("--gpu-memory", type=_memory_size, required=True, help="memory of one GPU, e.g. 80GB or 80GiB")
    planner.add_argument("--dtype", choices=WEIGHT_DTYPES, default="bf16", help="of the weights")
    planner.add_argument("--kv-dtype", choices=tuple(DTYPE_BYTES),
                         help="of the KV cache (default: --dtype; fp8 is a what-if: neva's cache holds the weights' "
                              "dtype)")
    planner.add_argument("--reserve", type=_fraction, default=0.1,
                         help="fraction of each GPU kept for the CUDA context, activations and workspaces")
    planner.add_argument("--block-size", type=_int_at_least(1), default=16, help="tokens per KV-cache block")
    planner.add_argument("--max-seq-len", type=_int_at_least(1),
                         help="the sequence the KV cache must hold at least once to fit (default: the model's context)")
    return parser


def _add_model_arguments(command: argparse.ArgumentParser) -> None:
    import neva_kernels

    from .weights import DTYPES

    command.add_argument("--model", type=Path, default=DEFAULT_MODEL,
                         help="llava-hf checkpoint directory (default: the shipped neva-shapes model)")
    run = command.add_argument_group("runtime")
    run.add_argument("--backend", choices=neva_kernels.BACKENDS, help="force one neva_kernels backend")
    run.add_argument("--dtype", choices=sorted(DTYPES), help="default: bfloat16 on CUDA, float32 on CPU")
    run.add_argument("--device", type=_device, help="cpu, cuda or cuda:N (default: cuda when available, else cpu)")
    run.add_argument("--block-size", type=_int_at_least(1), default=16, help="tokens per KV-cache block")
    run.add_argument("--cuda-graph", action=argparse.BooleanOptionalAction, default=None,
                     help="replay decode steps from CUDA graphs (default: on CUDA devices)")
    run.add_argument("--compile", action="store_true",
                     help="run decode steps compiled by torch.compile (the first step of each batch size compiles "
                          "for tens of seconds; not with --cuda-graph)")


def _steerlm(args):
    from .prompts import STEERLM_ATTRIBUTE_ORDER, SteerLMAttributes

    given = {name: getattr(args, name) for name in STEERLM_ATTRIBUTE_ORDER if getattr(args, name) is not None}
    return SteerLMAttributes(**given) if args.steerlm or given else None


def timing_line(t) -> str:
    return (f"vision {t.vision_s * 1e3:.1f} ms | projection {t.projection_s * 1e3:.1f} ms | prefill "
            f"{t.prefill_tokens} tokens {t.prefill_s * 1e3:.1f} ms | decode {t.decode_tokens} tokens "
            f"{t.decode_tokens_per_s:.1f} tokens/s")


def _process_device(args):
    """--device, by default cuda when available, else cpu; under torchrun on CUDA, cuda:LOCAL_RANK."""
    import torch

    from .parallel.launch import process_device

    return process_device(args.device or torch.device("cuda" if torch.cuda.is_available() else "cpu"))


def _load(args):
    """The model and tokenizer of --model on the device and dtype asked for (the backend set first)."""
    import torch

    from .config import NevaConfigError
    from .tokenizer import load_tokenizer
    from .weights import DTYPES, load_neva

    device = _process_device(args)
    dtype = DTYPES[args.dtype] if args.dtype else (torch.bfloat16 if device.type == "cuda" else torch.float32)
    model = load_neva(args.model, dtype=dtype, device=device, tensor_parallel=args.tensor_parallel)
    tokenizer = load_tokenizer(args.model)
    config = model.config
    context = config.text.max_position_embeddings
    if args.block_size > context:  # a block past the whole context is never filled, only allocated
        raise UsageError(f"argument --block-size: expected at most the model's context of {context} tokens, "
                         f"got {args.block_size}")
    if tokenizer.vocab_size > config.text.vocab_size + (tokenizer.image_token_id == config.text.vocab_size):
        raise NevaConfigError(f"the tokenizer in {args.model} has {tokenizer.vocab_size} tokens, more than the "
                              f"model's vocab_size {config.text.vocab_size} (config.json): some ids would have "
                              "no embedding")
    return model, tokenizer


def ask(args) -> str:
    from .config import NevaConfigError
    from .generate import Engine, Request
    from .image import checkpoint_image_stats, preprocess_images
    from .prompts import build_prompt
    from .sampling import SamplingParams
    from .tokenizer import model_input_ids

    if sys.stdout is None:  # started with stdout closed: print() would drop the answer without a word
        raise OSError("stdout is closed: there is nowhere to write the answer")
    tp = args.tensor_parallel
    # Under torchrun every rank gets here with the same arguments; a failure on any (a shard it cannot read, say)
    # becomes a failure on all of them, before the first collective of generation could wait for it forever.
    with tp.all_or_none(_message) if tp is not None else contextlib.nullcontext():
        model, tokenizer = _load(args)
        config = model.config
        images = preprocess_images(args.image, config.vision.image_size, *checkpoint_image_stats(args.model))
        prompt = build_prompt(args.question, steerlm=_steerlm(args), system=args.system,
                              num_images=len(args.image))
        ids = model_input_ids(tokenizer, prompt, config, len(args.image))
        room = config.text.max_position_embeddings - len(ids)
        if room < 1:
            raise NevaConfigError(f"the prompt takes {len(ids)} tokens, the model's context only "
                                  f"{config.text.max_position_embeddings}")
        # As any generator, stop at the end of the model's context rather than refuse the question.
        max_new_tokens = min(args.max_new_tokens, room)
        sampling = SamplingParams(max_new_tokens=max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                                  top_p=args.top_p, seed=args.seed, stop=tuple(args.stop),
                                  ignore_eos=args.ignore_eos)
        engine = Engine(model, max_batch_size=1, block_size=args.block_size, cuda_graph=args.cuda_graph,
                        compile_decode=args.compile, max_seq_len=len(ids) + max_new_tokens,
                        detokenize=tokenizer.decode_generated)
    prints = tp is None or tp.rank == 0  # every rank computes the answer, one prints it

    def stream(_, output) -> None:  # output: a StepOutput, its text the newly final part of the answer
        _write(output.text, end="")

    completion = engine.generate([Request(ids, images, sampling)], stream if args.stream and prints else None)[0]
    if prints:
        _write("" if args.stream else completion.text)
        print(timing_line(engine.timings), file=sys.stderr)
    return completion.text


def serve(args) -> None:
    from .server.app import serve  # FastAPI and uvicorn load for this command only
    from .server.chat import Served
    from .generate import Engine
    from .image import checkpoint_image_stats
    from .server.images import ImageLimits

    model, tokenizer = _load(args)
    engine = Engine(model, max_batch_size=args.max_batch_size, max_seq_len=args.max_seq_len,
                    block_size=args.block_size, max_waiting=args.max_queue, cuda_graph=args.cuda_graph,
                    compile_decode=args.compile, detokenize=tokenizer.decode_generated)
    limits = ImageLimits(args.max_image_bytes, args.max_image_pixels, args.allow_remote_images)
    served = Served(engine, tokenizer, *checkpoint_image_stats(args.model), limits)
    serve(served, args.served_model_name or args.model.resolve().name, args.host, args.port, args.shutdown_timeout)


def plan(args) -> None:
    from neva_kernels import NevaValueError

    from .config import PRESETS, from_hf_config
    from .plan import format_plan, plan_gpus, split_heads

    if args.model in PRESETS:
        config = PRESETS[args.model]
    elif Path(args.model).exists():
        config = from_hf_config(Path(args.model))
    else:
        raise UsageError(f"argument --model: expected a preset ({', '.join(PRESETS)}) or a checkpoint directory, "
                         f"got {args.model!r} (no such preset, file or directory)")
    context = config.text.max_position_embeddings
    if args.max_seq_len is not None and args.max_seq_len > context:
        raise UsageError(f"argument --max-seq-len: expected at most the model's context of {context} tokens, got "
                         f"{args.max_seq_len}")
    for gpus in args.gpus:  # every count checked before any is planned
        try:
            split_heads(config.text, gpus)
        except NevaValueError as error:
            raise UsageError(f"argument --gpus: {error}") from None
    kv_dtype = args.kv_dtype or args.dtype
    plans = plan_gpus(config, args.gpus, args.gpu_memory, args.dtype, kv_dtype, args.reserve, args.block_size,
                      args.max_seq_len)
    _write(format_plan(args.model, plans, args.dtype, kv_dtype, args.reserve))


def _write(text: str, end: str = "\n") -> None:
    """Print the answer and flush at once: a closed pipe or a full disk fails here, not unseen at exit."""
    try:
        print(text, end=end, flush=True)
    except OSError as error:
        raise OSError(f"cannot write the answer to stdout: {error.strerror or error}") from error


def _is_neva_error(error: BaseException) -> bool:
    """Errors raised on purpose (neva's own types, failed I/O, exhausted memory) carry a message meant for the
    user; anything else is a bug, reported by its type."""
    torch = sys.modules.get("torch")
    own = type(error).__module__.split(".")[0] in ("neva_kernels", "neva_model")
    expected = (UsageError, OSError, MemoryError) + ((torch.OutOfMemoryError,) if torch else ())
    return own or isinstance(error, expected)


def _drop_unwritable_stdout() -> None:
    """After a failed write, stdout still holds what it could not write; point it at /dev/null so that Python's
    flush at exit does not print a second error of its own."""
    try:
        if sys.stdout is not None:
            sys.stdout.flush()
    except (OSError, ValueError):
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def _message(error: Exception) -> str:
    """The one line a user sees for `error` (after "neva: error: ")."""
    message = str(error) if _is_neva_error(error) else f"internal error, {type(error).__name__}: {error}"
    return " ".join(message.split())


def _rank_prefix(error: Exception) -> str | None:
    """Under torchrun, what goes before the message of `error` on this rank: None where rank 0 prints it (malformed
    arguments and failures the ranks agreed on are alike on every rank), "rank R: " for an error of this rank alone."""
    if os.environ.get("WORLD_SIZE", "1") == "1":
        return ""
    collectives = sys.modules.get("neva_model.parallel.collectives")
    alike = isinstance(error, UsageError) or (collectives is not None and
                                              isinstance(error, collectives.TensorParallelError))
    rank = os.environ.get("RANK", "0")
    if alike:
        return "" if rank == "0" else None
    return f"rank {rank}: "


def main(argv: list[str] | None = None) -> int:
    """`neva`: runs one command; every failure becomes one line on stderr and a non-zero exit status."""
    try:
        args = _parser().parse_args(argv)
        import neva_kernels

        from .parallel.launch import process_group, world_size

        neva_kernels.backends.read_environment()

        if args.command != "ask" and world_size() > 1:
            raise UsageError(f"neva {args.command} runs in one process, not under torchrun "
                             f"(WORLD_SIZE={world_size()}); tensor parallelism is for neva ask")
        # Scoped: a caller of main() (tests, a notebook) keeps its own backend setting afterwards.
        backend = getattr(args, "backend", None)
        with neva_kernels.use_backend(backend) if backend else contextlib.nullcontext(), \
                process_group(_process_device(args)) if args.command == "ask" else contextlib.nullcontext() \
                as args.tensor_parallel:
            {"ask": ask, "serve": serve, "plan": plan}[args.command](args)
        return 0
    except KeyboardInterrupt:
        print("neva: interrupted", file=sys.stderr)
        return 130
    except Exception as error:  # the one boundary: nothing below prints a traceback to a user
        if os.environ.get("NEVA_DEBUG") == "1":
            traceback.print_exc()
        prefix = _rank_prefix(error)
        if prefix is not None:
            print(f"neva: error: {prefix}{_message(error)}", file=sys.stderr)
        _drop_unwritable_stdout()
        return 2 if isinstance(error, UsageError) else 1


if __name__ == "__main__":
    sys.exit(main())
