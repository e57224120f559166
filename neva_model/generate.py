"""The generation engine: continuous batching of NeVA requests over a paged KV cache.

The step-wise API (as vLLM's): `add_request` queues a request and returns its id, `step` advances every
running request by one token and streams what it produced, `abort` drops a request and frees its blocks at
once. `generate` is a loop over them.

A queued request takes a batch slot at the next step when one is free and the cache can hold its whole answer
(prompt + max_new_tokens), so a running sequence never runs out of blocks; the queue is bounded
(`QueueFullError` past `max_waiting`). Requests admitted together are prefilled as one packed variable-length
batch (flash_attention with cu_seqlens, K/V written by append_kv_cache). Every decode step then runs all slots
at once on fixed-shape tensors (idle slots have seq_len 0 and write nowhere), so a request joins the running
batch without a recompile and the step can be captured in a CUDA graph. Greedy answers do not depend on what
else is in the batch. A finished sequence frees its slot and its blocks at once.

Under tensor parallelism (neva_model.parallel) every rank runs its own Engine, given the same requests in the same
order. Admission and block allocation depend only on those requests and on the sampled tokens, which are rank 0's
on every rank (`_sample`), so every rank makes the same scheduling decisions without exchanging them.
"""
from __future__ import annotations

import itertools
import time
from collections import deque
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import Tensor

from neva_kernels import NevaError, NevaTypeError, NevaValueError, OutOfBlocksError, PagedKVCache, value_checks
from neva_kernels.errors import expect_int

from .compiled_decode import CompiledDecode
from .cuda_graphs import DecodeGraphs
from .decoder import AttentionBatch
from .model import Neva, packed_prefill_batch
from .sampling import SamplingParams, sample
from .text_stream import TextStream
from .vision import check_pixel_values


class QueueFullError(NevaError, RuntimeError):
    """The engine's waiting queue is full: the request was not added (retry later)."""


@dataclass
class Request:
    input_ids: list[int]  # the prompt, with one image token per image feature (see neva_model.tokenizer)
    images: Tensor | None = None  # preprocessed pixel values [images, 3, S, S]
    sampling: SamplingParams = field(default_factory=SamplingParams)


@dataclass
class Completion:
    token_ids: list[int]  # the generated tokens, without the EOS token
    text: str | None  # decoded answer, cut before a stop string (None without a detokenizer)
    finish_reason: str  # "eos", "stop" or "length"


@dataclass
class StepOutput:
    """What one step did for one request."""
    request_id: int
    token_id: int | None  # the token added to the answer (None: the request ended on EOS)
    text: str | None  # new answer text that no later token can change (None without a detokenizer)
    completion: Completion | None = None  # set on the request's last output


@dataclass
class Timings:
    """Seconds spent per phase (device-synchronized) and the tokens processed, summed over all steps."""
    vision_s: float = 0.0
    projection_s: float = 0.0
    prefill_s: float = 0.0
    decode_s: float = 0.0
    prefill_tokens: int = 0
    decode_tokens: int = 0

    @property
    def decode_tokens_per_s(self) -> float:
        return self.decode_tokens / self.decode_s if self.decode_s > 0 else 0.0


@dataclass(eq=False)  # compared by identity: slots and the queue hold each sequence once
class _Sequence:
    seq_id: int  # the request id, also the sequence's key in the block allocator
    request: Request
    generator: torch.Generator | None
    text: TextStream | None
    tokens: list[int] = field(default_factory=list)
    finish_reason: str | None = None

    @property
    def length(self) -> int:
        return len(self.request.input_ids) + len(self.tokens)

    @property
    def final_length(self) -> int:
        return len(self.request.input_ids) + self.request.sampling.max_new_tokens


class Engine:
    """Generates answers to NeVA requests with `model` (a Neva in eval mode, on its device). Not thread-safe:
    one thread calls add_request / step / abort (the server hands requests to its engine thread)."""

    def __init__(self, model: Neva, *, max_batch_size: int = 8, max_seq_len: int | None = None,
                 block_size: int = 16, num_blocks: int | None = None, max_waiting: int = 1024,
                 detokenize: Callable[[list[int]], str] | None = None, eos_token_ids: tuple[int, ...] | None = None,
                 value_checks: bool = False, cuda_graph: bool | None = None, compile_decode: bool = False):
        """max_seq_len: the longest prompt + answer (default: min(2048, the model's max positions)).
        num_blocks: KV-cache blocks (default: enough for every slot at max_seq_len).
        max_waiting: requests that may wait for a slot; add_request refuses more (QueueFullError).
        value_checks: keep neva_kernels' data checks on inside the engine (each costs a device sync; the
        engine builds its slots, block tables and lengths itself, so they are off by default).
        cuda_graph: replay decode steps from CUDA graphs, one per batch-size bucket (neva_model.cuda_graphs);
        default: on CUDA devices, not elsewhere (where it is an error).
        compile_decode: run decode steps compiled by torch.compile, one compilation per batch-size bucket
        (neva_model.compiled_decode); the first step of each bucket pays the compilation. Not with cuda_graph."""
        text = model.config.text
        max_seq_len = min(2048, text.max_position_embeddings) if max_seq_len is None else max_seq_len
        for name, value in (("max_batch_size", max_batch_size), ("max_seq_len", max_seq_len),
                            ("block_size", block_size), ("max_waiting", max_waiting)):
            expect_int("Engine", name, value, minimum=1)
        if num_blocks is not None:
            expect_int("Engine", "num_blocks", num_blocks, minimum=1)
        if max_seq_len > text.max_position_embeddings:
            raise NevaValueError(f"Engine: max_seq_len must be in 1..{text.max_position_embeddings} "
                                 f"(the model's max_position_embeddings), got {max_seq_len}")
        if detokenize is not None and not callable(detokenize):
            raise NevaTypeError(f"Engine: detokenize must be callable or None, got {type(detokenize).__name__}")
        eos = text.eos_token_id if eos_token_ids is None else eos_token_ids
        eos = (eos,) if isinstance(eos, int) else tuple(eos or ())
        if not all(isinstance(t, int) and not isinstance(t, bool) for t in eos):
            raise NevaTypeError(f"Engine: eos_token_ids must be ints, got {eos!r}")
        self.model, self.detokenize, self.value_checks = model, detokenize, value_checks
        self.max_seq_len, self.max_waiting, self.device = max_seq_len, max_waiting, model.lm_head.weight.device
        self.eos_token_ids = set(eos)
        width = -(-max_seq_len // block_size)
        self.cache = PagedKVCache(text.num_layers, num_blocks or max_batch_size * width, block_size,
                                  model.kv_heads_per_process, text.attention_head_dim, model.lm_head.weight.dtype,
                                  self.device)
        self.slots: list[_Sequence | None] = [None] * max_batch_size
        self._waiting: deque[_Sequence] = deque()
        self._live: dict[int, _Sequence] = {}  # waiting and running, by request id
        self._ids = itertools.count()
        self.timings = Timings()
        # The decode step's inputs: fixed shapes and addresses, refilled in place every step.
        new = (lambda *shape, dtype=torch.int64: torch.zeros(shape, dtype=dtype, device=self.device))
        self.step_tokens, self.step_positions, self.step_slots = new(max_batch_size), new(max_batch_size), \
            new(max_batch_size)
        self.step_block_tables = new(max_batch_size, width, dtype=torch.int32)
        self.step_seq_lens = new(max_batch_size, dtype=torch.int32)
        if compile_decode and cuda_graph:
            raise NevaValueError("Engine: compile_decode and cuda_graph exclude each other, got both")
        if compile_decode and model.tensor_parallel is not None:
            raise NevaValueError("Engine: compile_decode is not available with tensor parallelism "
                                 "(collectives inside compiled steps are untried)")
        if cuda_graph is None:  # (not yet with tensor parallelism: collectives inside captured graphs are untried)
            cuda_graph = self.device.type == "cuda" and model.tensor_parallel is None and not compile_decode
        # What runs a decode step other than decode_forward itself (None: eager).
        self.step_runner = (DecodeGraphs(self.decode_forward, max_batch_size, self.device) if cuda_graph
                            else CompiledDecode(self.decode_forward, max_batch_size) if compile_decode else None)

    @property
    def allocator(self):
        return self.cache.allocator

    @property
    def num_waiting(self) -> int:
        return len(self._waiting)

    @property
    def num_running(self) -> int:
        return sum(s is not None for s in self.slots)

    def has_unfinished(self) -> bool:
        return bool(self._live)

    @contextmanager
    def _timed(self, phase: str):
        """Time a phase, with neva_kernels' value checks set as the engine was told."""
        sync = torch.cuda.synchronize if self.device.type == "cuda" else (lambda: None)
        sync()
        start = time.perf_counter()
        with value_checks(self.value_checks):
            yield
        sync()
        setattr(self.timings, phase, getattr(self.timings, phase) + time.perf_counter() - start)

    # ---- the step-wise API ------------------------------------------------------------------------------

    def check_request(self, request: Request) -> None:
        """Raise NevaValueError / NevaTypeError if this engine can never answer `request` (no state is read
        but the engine's fixed configuration, so any thread may call it)."""
        ids, config = request.input_ids, self.model.config
        if not isinstance(ids, list) or not all(isinstance(t, int) and not isinstance(t, bool) for t in ids):
            raise NevaTypeError(f"Engine: a request's input_ids must be a list of ints, got {ids!r:.80}")
        need = len(ids) + request.sampling.max_new_tokens
        if not ids or need > self.max_seq_len:
            raise NevaValueError(f"Engine: a request needs 1..{self.max_seq_len} tokens (prompt + max_new_tokens), "
                                 f"got {len(ids)} + {request.sampling.max_new_tokens}")
        if self.allocator.blocks_for(need) > self.allocator.num_blocks:
            raise NevaValueError(f"Engine: a request of {need} tokens needs more than the cache's "
                                 f"{self.allocator.num_blocks} blocks")
        vocab = config.text.vocab_size
        bad = next((t for t in ids if not 0 <= t < vocab and t != config.image_token_index), None)
        if bad is not None:
            raise NevaValueError(f"Engine: a request's token ids must be in [0, {vocab}) or the image token "
                                 f"{config.image_token_index}, got {bad}")
        image_tokens = ids.count(config.image_token_index)
        if request.images is not None:
            check_pixel_values(config.vision, request.images, "Engine", "request.images")
        images = 0 if request.images is None else request.images.shape[0]
        if image_tokens != images * config.image_tokens_per_image:
            raise NevaValueError(f"Engine: a request has {image_tokens} image tokens for {images} image(s) of "
                                 f"{config.image_tokens_per_image} tokens each")
        if request.sampling.stop and self.detokenize is None:
            raise NevaValueError("Engine: stop strings need a detokenizer (Engine(detokenize=...))")

    def add_request(self, request: Request) -> int:
        """Queue `request`; returns its id. It joins the running batch at a step when a slot and blocks are free."""
        self.check_request(request)
        if len(self._waiting) >= self.max_waiting:
            raise QueueFullError(f"Engine: {len(self._waiting)} requests are waiting, the limit (max_waiting)")
        text = None if self.detokenize is None else TextStream(self.detokenize, request.sampling.stop)
        sequence = _Sequence(next(self._ids), request, request.sampling.generator(self.device), text)
        self._waiting.append(sequence)
        self._live[sequence.seq_id] = sequence
        return sequence.seq_id

    def abort(self, request_id: int) -> bool:
        """Drop a waiting or running request and free its blocks now; False if it is not (or no longer) here."""
        sequence = self._live.pop(request_id, None)
        if sequence is None:
            return False
        if sequence in self.slots:
            self.slots[self.slots.index(sequence)] = None
        else:
            self._waiting.remove(sequence)
        if sequence.seq_id in self.allocator:
            self.allocator.free(sequence.seq_id)
        return True

    @torch.inference_mode()
    def step(self) -> list[StepOutput]:
        """Admit waiting requests into free slots (prefilled together), then decode one token for every running
        request. Returns one output per request that advanced; a request's last one carries its Completion."""
        outputs: list[StepOutput] = []
        admitted = self._admit()
        if admitted:
            self._prefill(admitted, outputs)
        elif self._waiting and not any(self.slots):  # only if blocks leaked: the queue would never move
            raise OutOfBlocksError(f"Engine: {self.allocator.num_free_blocks} free blocks cannot hold "
                                   f"a request of {self._waiting[0].final_length} tokens")
        if any(self.slots):
            self._decode_step(outputs)
        return outputs

    @torch.inference_mode()
    def generate(self, requests: list[Request],
                 on_output: Callable[[int, StepOutput], None] | None = None) -> list[Completion]:
        """Answers to `requests`, in their order; on_output(request index, output) streams every step's output."""
        for request in requests:
            self.check_request(request)
        pending, index, done = deque(requests), {}, {}
        try:
            while pending or len(done) < len(index):
                while pending and len(self._waiting) < self.max_waiting:
                    index[self.add_request(pending.popleft())] = len(index)
                for output in self.step():
                    if output.request_id not in index:
                        continue  # another caller's request sharing this engine
                    if on_output is not None:
                        on_output(index[output.request_id], output)
                    if output.completion is not None:
                        done[index[output.request_id]] = output.completion
        finally:  # after an error (e.g. in on_output) the engine is left without this call's requests
            for request_id in index:
                self.abort(request_id)
        return [done[i] for i in range(len(requests))]

    def _admit(self) -> list[_Sequence]:
        """Move waiting sequences into free slots while the cache can hold all running answers in full."""
        blocks_for = self.allocator.blocks_for
        promised = sum(blocks_for(s.final_length) - len(self.allocator.blocks(s.seq_id)) for s in self.slots if s)
        admitted = []
        for slot, occupant in enumerate(self.slots):
            if occupant is not None or not self._waiting:
                continue
            need = blocks_for(self._waiting[0].final_length)
            if promised + need > self.allocator.num_free_blocks:
                break
            promised += need
            self.slots[slot] = self._waiting.popleft()
            admitted.append(self.slots[slot])
        return admitted

    # ---- prefill and decode -----------------------------------------------------------------------------

    def _prefill(self, sequences: list[_Sequence], outputs: list[StepOutput]) -> None:
        ids = torch.tensor([t for s in sequences for t in s.request.input_ids], device=self.device)
        images = [s.request.images for s in sequences if s.request.images is not None]
        features = None
        if images:
            with self._timed("vision_s"):
                features = self.model.image_features(torch.cat(images).to(self.device))
        with self._timed("projection_s"):
            embeds = self.model.embed(ids, features)
        with self._timed("prefill_s"):
            lengths = [len(s.request.input_ids) for s in sequences]
            batch = packed_prefill_batch(lengths, self.device)
            slots = [slot for s, n in zip(sequences, lengths) for slot in self.allocator.allocate(s.seq_id, n)]
            batch.slot_mapping = torch.tensor(slots, device=self.device)
            hidden = self.model.language_model(embeds, batch, self.cache)
            logits = self.model.lm_head(hidden[batch.cu_seqlens[1:].long() - 1])
            tokens = self._sample(logits, sequences)
        self.timings.prefill_tokens += len(ids)
        self._accept(sequences, tokens, outputs)

    def decode_forward(self, rows: int | None = None) -> Tensor:
        """Logits [rows, vocab] of one decode step over the first `rows` slots (default all), from the step_*
        tensors only (the CUDA-graph-able part)."""
        rows = len(self.slots) if rows is None else rows
        batch = AttentionBatch(positions=self.step_positions[:rows], slot_mapping=self.step_slots[:rows],
                               block_tables=self.step_block_tables[:rows], seq_lens=self.step_seq_lens[:rows])
        hidden = self.model.language_model(self.model.embed(self.step_tokens[:rows]), batch, self.cache)
        return self.model.lm_head(hidden)

    def _fill_step_tensors(self, active: list[tuple[int, _Sequence]]) -> None:
        """Write the decode step's inputs: each active slot's last token at its next position, one new cache slot."""
        tokens, positions, slots = [0] * len(self.slots), [0] * len(self.slots), [-1] * len(self.slots)
        tables = torch.zeros(self.step_block_tables.shape, dtype=torch.int32)
        for i, s in active:
            tokens[i], positions[i] = s.tokens[-1], s.length - 1
            slots[i] = self.allocator.extend(s.seq_id, 1)[0]
            blocks = self.allocator.blocks(s.seq_id)
            tables[i, :len(blocks)] = torch.tensor(blocks, dtype=torch.int32)
        self.step_tokens.copy_(torch.tensor(tokens))
        self.step_positions.copy_(torch.tensor(positions))
        self.step_slots.copy_(torch.tensor(slots))
        self.step_block_tables.copy_(tables)
        self.step_seq_lens.copy_(torch.tensor([s.length if s else 0 for s in self.slots], dtype=torch.int32))

    def _decode_step(self, outputs: list[StepOutput]) -> None:
        with self._timed("decode_s"):
            active = [(i, s) for i, s in enumerate(self.slots) if s is not None]
            self._fill_step_tensors(active)
            span = active[-1][0] + 1  # the step runs the slots up to the last occupied one
            logits = self.step_runner.run(span) if self.step_runner else self.decode_forward(span)
            sequences = [s for _, s in active]
            new = self._sample(logits[[i for i, _ in active]], sequences)
        self.timings.decode_tokens += len(active)
        self._accept(sequences, new, outputs)

    def _sample(self, logits: Tensor, sequences: list[_Sequence]) -> list[int]:
        tokens = sample(logits, [s.request.sampling for s in sequences], [s.generator for s in sequences])
        if self.model.tensor_parallel is not None:  # rank 0's draw everywhere (unseeded draws differ per process)
            tokens = self.model.tensor_parallel.broadcast(tokens)
        return tokens.tolist()

    # ---- bookkeeping ------------------------------------------------------------------------------------

    def _accept(self, sequences: list[_Sequence], tokens: list[int], outputs: list[StepOutput]) -> None:
        """Append each sequence's new token, report it, and retire the sequences that finished."""
        for s, token in zip(sequences, tokens):
            params = s.request.sampling
            eos = token in self.eos_token_ids and not params.ignore_eos
            if eos:
                s.finish_reason = "eos"
            else:
                s.tokens.append(token)
                if s.text is not None:
                    s.text.add(token)
                if s.text is not None and s.text.stopped:
                    s.finish_reason = "stop"
                elif len(s.tokens) == params.max_new_tokens:
                    s.finish_reason = "length"
            finished = s.finish_reason is not None
            text = None if s.text is None else s.text.take_ready(final=finished)
            completion = None
            if finished:
                completion = Completion(s.tokens, None if s.text is None else s.text.text, s.finish_reason)
                self.allocator.free(s.seq_id)
                self.slots[self.slots.index(s)] = None
                del self._live[s.seq_id]
            outputs.append(StepOutput(s.seq_id, None if eos else token, text, completion))
