"""The generation engine: batched packed prefill, then static-shape decode steps over a paged KV cache.

Requests wait in a queue and take a batch slot when one is free and the cache can hold their whole answer
(prompt + max_new_tokens), so a running sequence never runs out of blocks. New requests are prefilled
together as one packed variable-length batch (flash_attention with cu_seqlens, K/V written by
append_kv_cache). Every decode step then runs all slots at once on fixed-shape tensors (idle slots have
seq_len 0 and write nowhere) so that the step could be captured in a CUDA graph. A finished sequence frees
its slot and its blocks at once.
"""
from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import Tensor

from neva_kernels import NevaValueError, OutOfBlocksError, PagedKVCache, set_value_checks
from neva_kernels.checks import value_checks_enabled

from .decoder import AttentionBatch
from .model import Neva, packed_prefill_batch
from .sampling import SamplingParams, find_stop, sample


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
class Timings:
    """Seconds spent per phase (device-synchronized) and the tokens processed, summed over generate calls."""
    vision_s: float = 0.0
    projection_s: float = 0.0
    prefill_s: float = 0.0
    decode_s: float = 0.0
    prefill_tokens: int = 0
    decode_tokens: int = 0

    @property
    def decode_tokens_per_s(self) -> float:
        return self.decode_tokens / self.decode_s if self.decode_s > 0 else 0.0


@dataclass
class _Sequence:
    index: int  # position of the request in the generate() call
    request: Request
    generator: torch.Generator | None
    tokens: list[int] = field(default_factory=list)
    finish_reason: str | None = None
    text: str | None = None

    @property
    def seq_id(self) -> int:
        return self.index

    @property
    def length(self) -> int:
        return len(self.request.input_ids) + len(self.tokens)

    @property
    def final_length(self) -> int:
        return len(self.request.input_ids) + self.request.sampling.max_new_tokens


class Engine:
    """Generates answers for batches of NeVA requests with `model` (a Neva in eval mode, on its device)."""

    def __init__(self, model: Neva, *, max_batch_size: int = 8, max_seq_len: int | None = None,
                 block_size: int = 16, num_blocks: int | None = None,
                 detokenize: Callable[[list[int]], str] | None = None, eos_token_ids: tuple[int, ...] | None = None,
                 value_checks: bool = False, cuda_graph: bool = False):
        """max_seq_len: the longest prompt + answer (default: min(2048, the model's max positions)).
        num_blocks: KV-cache blocks (default: enough for every slot at max_seq_len).
        value_checks: keep neva_kernels' data checks on inside the engine (each costs a device sync; the
        engine builds its slots, block tables and lengths itself, so they are off by default).
        cuda_graph: replay the decode step from a CUDA graph captured at its first run (CUDA only)."""
        text = model.config.text
        max_seq_len = min(2048, text.max_position_embeddings) if max_seq_len is None else max_seq_len
        if not 1 <= max_seq_len <= text.max_position_embeddings:
            raise NevaValueError(f"Engine: max_seq_len must be in 1..{text.max_position_embeddings} "
                                 f"(the model's max_position_embeddings), got {max_seq_len}")
        self.model, self.detokenize, self.value_checks = model, detokenize, value_checks
        self.max_seq_len, self.device = max_seq_len, model.lm_head.weight.device
        if cuda_graph and self.device.type != "cuda":
            raise NevaValueError(f"Engine: cuda_graph needs the model on a CUDA device, it is on {self.device}")
        self.cuda_graph, self._graph, self._graph_logits = cuda_graph, None, None
        eos = text.eos_token_id if eos_token_ids is None else eos_token_ids
        self.eos_token_ids = set((eos,) if isinstance(eos, int) else eos or ())
        width = -(-max_seq_len // block_size)
        self.cache = PagedKVCache(text.num_layers, num_blocks or max_batch_size * width, block_size,
                                  text.num_kv_heads, text.attention_head_dim, model.lm_head.weight.dtype, self.device)
        self.slots: list[_Sequence | None] = [None] * max_batch_size
        self.timings = Timings()
        # The decode step's inputs: fixed shapes and addresses, refilled in place every step.
        new = (lambda *shape, dtype=torch.int64: torch.zeros(shape, dtype=dtype, device=self.device))
        self.step_tokens, self.step_positions, self.step_slots = new(max_batch_size), new(max_batch_size), \
            new(max_batch_size)
        self.step_block_tables = new(max_batch_size, width, dtype=torch.int32)
        self.step_seq_lens = new(max_batch_size, dtype=torch.int32)

    @property
    def allocator(self):
        return self.cache.allocator

    @contextmanager
    def _timed(self, phase: str):
        """Time a phase, with neva_kernels' value checks set as the engine was told."""
        sync = torch.cuda.synchronize if self.device.type == "cuda" else (lambda: None)
        checks = value_checks_enabled()
        set_value_checks(self.value_checks)
        sync()
        start = time.perf_counter()
        try:
            yield
        finally:
            set_value_checks(checks)
        sync()
        setattr(self.timings, phase, getattr(self.timings, phase) + time.perf_counter() - start)

    # ---- the public call -------------------------------------------------------------------------------------

    @torch.inference_mode()
    def generate(self, requests: list[Request],
                 on_token: Callable[[int, int], None] | None = None) -> list[Completion]:
        """Answers to `requests`, in their order; on_token(request index, token id) streams every new token."""
        for request in requests:
            self._check(request)
        waiting = deque(_Sequence(i, r, r.sampling.generator(self.device)) for i, r in enumerate(requests))
        done: dict[int, _Sequence] = {}
        try:
            while waiting or any(self.slots):
                admitted = self._admit(waiting)
                if admitted:
                    self._prefill(admitted, on_token, done)
                elif not any(self.slots):  # only if blocks leaked: waiting would never end
                    raise OutOfBlocksError(f"Engine: {self.allocator.num_free_blocks} free blocks cannot hold "
                                           f"a request of {waiting[0].final_length} tokens")
                if any(self.slots):
                    self._decode_step(on_token, done)
        finally:  # after an error (e.g. in on_token) the engine is left empty and usable
            for i, s in enumerate(self.slots):
                if s is not None and s.seq_id in self.allocator:
                    self.allocator.free(s.seq_id)
                self.slots[i] = None
        return [Completion(done[i].tokens, done[i].text, done[i].finish_reason) for i in range(len(requests))]

    def _check(self, request: Request) -> None:
        need = len(request.input_ids) + request.sampling.max_new_tokens
        if not request.input_ids or need > self.max_seq_len:
            raise NevaValueError(f"Engine: a request needs 1..{self.max_seq_len} tokens (prompt + max_new_tokens), "
                                 f"got {len(request.input_ids)} + {request.sampling.max_new_tokens}")
        if self.allocator.blocks_for(need) > self.allocator.num_blocks:
            raise NevaValueError(f"Engine: a request of {need} tokens needs more than the cache's "
                                 f"{self.allocator.num_blocks} blocks")
        config = self.model.config
        image_tokens = sum(t == config.image_token_index for t in request.input_ids)
        images = 0 if request.images is None else request.images.shape[0]
        if image_tokens != images * config.image_tokens_per_image:
            raise NevaValueError(f"Engine: a request has {image_tokens} image tokens for {images} image(s) of "
                                 f"{config.image_tokens_per_image} tokens each")
        if request.sampling.stop and self.detokenize is None:
            raise NevaValueError("Engine: stop strings need a detokenizer (Engine(detokenize=...))")

    def _admit(self, waiting: deque[_Sequence]) -> list[_Sequence]:
        """Move waiting sequences into free slots while the cache can hold all running answers in full."""
        blocks_for = self.allocator.blocks_for
        promised = sum(blocks_for(s.final_length) - len(self.allocator.blocks(s.seq_id)) for s in self.slots if s)
        admitted = []
        for slot, occupant in enumerate(self.slots):
            if occupant is not None or not waiting:
                continue
            need = blocks_for(waiting[0].final_length)
            if promised + need > self.allocator.num_free_blocks:
                break
            promised += need
            self.slots[slot] = waiting.popleft()
            admitted.append(self.slots[slot])
        return admitted

    # ---- prefill and decode -----------------------------------------------------------------------------

    def _prefill(self, sequences: list[_Sequence], on_token, done) -> None:
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
            tokens = sample(logits, [s.request.sampling for s in sequences], [s.generator for s in sequences])
        self.timings.prefill_tokens += len(ids)
        self._accept(sequences, tokens.tolist(), on_token, done)

    def decode_forward(self) -> Tensor:
        """Logits [slots, vocab] of one decode step, from the step_* tensors only (the CUDA-graph-able part)."""
        batch = AttentionBatch(positions=self.step_positions, slot_mapping=self.step_slots,
                               block_tables=self.step_block_tables, seq_lens=self.step_seq_lens)
        hidden = self.model.language_model(self.model.embed(self.step_tokens), batch, self.cache)
        return self.model.lm_head(hidden)

    def _replay_decode_forward(self) -> Tensor:
        """decode_forward from a CUDA graph, captured on first use; the step tensors are its fixed inputs."""
        if self._graph is None:
            side, main = torch.cuda.Stream(self.device), torch.cuda.current_stream(self.device)
            side.wait_stream(main)
            with torch.cuda.stream(side):
                self.decode_forward()  # warm-up: kernels compiled, tuned and caches built outside the capture
            main.wait_stream(side)
            self._graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self._graph):
                self._graph_logits = self.decode_forward()
        self._graph.replay()
        return self._graph_logits

    def _decode_step(self, on_token, done) -> None:
        with self._timed("decode_s"):
            tokens, positions, slots = [0] * len(self.slots), [0] * len(self.slots), [-1] * len(self.slots)
            tables = torch.zeros(self.step_block_tables.shape, dtype=torch.int32)
            active = [(i, s) for i, s in enumerate(self.slots) if s is not None]
            for i, s in active:  # the last sampled token goes in at the next position
                tokens[i], positions[i] = s.tokens[-1], s.length - 1
                slots[i] = self.allocator.extend(s.seq_id, 1)[0]
                blocks = self.allocator.blocks(s.seq_id)
                tables[i, :len(blocks)] = torch.tensor(blocks, dtype=torch.int32)
            self.step_tokens.copy_(torch.tensor(tokens))
            self.step_positions.copy_(torch.tensor(positions))
            self.step_slots.copy_(torch.tensor(slots))
            self.step_block_tables.copy_(tables)
            self.step_seq_lens.copy_(torch.tensor([s.length if s else 0 for s in self.slots], dtype=torch.int32))
            logits = self._replay_decode_forward() if self.cuda_graph else self.decode_forward()
            rows = [i for i, _ in active]
            sequences = [s for _, s in active]
            new = sample(logits[rows], [s.request.sampling for s in sequences], [s.generator for s in sequences])
            new = new.tolist()
        self.timings.decode_tokens += len(active)
        self._accept(sequences, new, on_token, done)

    # ---- bookkeeping ------------------------------------------------------------------------------------

    def _accept(self, sequences: list[_Sequence], tokens: list[int], on_token, done) -> None:
        """Append each sequence's new token, stream it, and retire the sequences that finished."""
        for s, token in zip(sequences, tokens):
            params = s.request.sampling
            if token in self.eos_token_ids and not params.ignore_eos:
                s.finish_reason = "eos"
            else:
                s.tokens.append(token)
                if on_token is not None:
                    on_token(s.index, token)
                if self.detokenize is not None:
                    s.text = self.detokenize(s.tokens)
                    cut = find_stop(s.text, params.stop)
                    if cut is not None:
                        s.text, s.finish_reason = s.text[:cut], "stop"
                if s.finish_reason is None and len(s.tokens) == params.max_new_tokens:
                    s.finish_reason = "length"
            if s.finish_reason is not None:
                self.allocator.free(s.seq_id)
                self.slots[self.slots.index(s)] = None
                done[s.index] = s
