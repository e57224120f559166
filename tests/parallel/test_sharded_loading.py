"""Sharded loading, in one process (loading needs no collective): each rank reads only its slice of every split
tensor, the vocabulary padding is zero, and a model the ranks cannot split is refused before any tensor is read."""
from __future__ import annotations

import re

import pytest
import torch
from safetensors import safe_open

import neva_model.weights as weights
from neva_model import NevaConfigError, load_neva
from neva_model.config import TextConfig
from neva_model.parallel import Layout, TensorParallel
from neva_model.parallel.sharding import COLUMN_PARALLEL, ROW_PARALLEL

from tests.model.tiny_llava import TinyLlava, write_checkpoint

CASE = TinyLlava("tp-load", heads=8, kv_heads=4, hidden=64, biases=True, vocab=95, image_token_index=94)
# checkpoint names of the decoder tensors tensor parallelism splits (row-parallel biases stay whole; the vision
# tower's q/k/v are replicated)
SPLIT = re.compile(rf"^language_model\..*(({'|'.join(COLUMN_PARALLEL)})\.(weight|bias)|({'|'.join(ROW_PARALLEL)})"
                   r"\.weight|embed_tokens\.weight|lm_head\.weight)$")


class CountingFiles:
    """safe_open for the loader that counts, per tensor name, the elements it hands out (get_tensor or an indexed
    get_slice view): what the loader actually reads from the files."""

    def __init__(self):
        self.read: dict[str, int] = {}

    def __call__(self, *args, **kwargs):
        counter = self

        class File:
            def __init__(self):
                self.file = safe_open(*args, **kwargs)

            def __enter__(self):
                self.file.__enter__()
                return self

            def __exit__(self, *exc):
                return self.file.__exit__(*exc)

            def keys(self):
                return self.file.keys()

            def get_tensor(self, name):
                return counter.count(name, self.file.get_tensor(name))

            def get_slice(self, name):
                view = self.file.get_slice(name)

                class View:
                    get_shape, get_dtype = view.get_shape, view.get_dtype

                    def __getitem__(self, index):
                        return counter.count(name, view[index])
                return View()
        return File()

    def count(self, name: str, tensor: torch.Tensor) -> torch.Tensor:
        self.read[name] = self.read.get(name, 0) + tensor.numel()
        return tensor


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    directory = tmp_path_factory.mktemp("tp-load")
    write_checkpoint(CASE, directory)
    with safe_open(str(directory / "model.safetensors"), "pt") as file:
        sizes = {name: file.get_slice(name).get_shape() for name in file.keys()}
    return directory, {name: torch.Size(shape) for name, shape in sizes.items()}


def _load_counting(monkeypatch, directory, tp: TensorParallel):
    files = CountingFiles()
    monkeypatch.setattr(weights, "safe_open", files)
    return load_neva(directory, tensor_parallel=tp), files.read


@pytest.mark.parametrize("processes", [2, 4])
def test_each_rank_reads_only_its_slice_of_the_split_tensors(checkpoint, monkeypatch, processes):
    directory, shapes = checkpoint
    sizes = {name: shape.numel() for name, shape in shapes.items()}
    split = {name: size for name, size in sizes.items() if SPLIT.search(name)}
    whole = {name: size for name, size in sizes.items() if name not in split}
    assert len(split) == 2 + 2 * (3 * 2 + 1 + 2 * 2 + 1)  # embed, head; per layer q/k/v weight+bias, o, gate/up, down
    split_read = []
    for rank in range(processes):
        _, read = _load_counting(monkeypatch, directory, TensorParallel(rank, processes))
        assert {name: read[name] for name in whole} == whole  # replicated: read once, whole
        split_read.append(sum(read[name] for name in split))
        for name, size in split.items():  # each split tensor: 1/N of it, rounded up to whole rows or columns
            shape = shapes[name]
            assert read[name] <= max(-(-n // processes) * (size // n) for n in shape), name
    assert sum(split_read) == sum(split.values())  # the ranks' slices partition every split tensor
    assert max(split_read) <= sum(split.values()) / processes * 1.05


def test_rank_slices_are_the_full_models_rows_and_columns(checkpoint):
    """Rank 3 of 4 (head_dim 8, 48 MLP features; the vocab padded: 95 = 3 * 24 + 23) holds these of one process's
    model: query heads 6-7, K/V head 3, MLP features 36-47, vocabulary rows 72-94 and one zero row."""
    directory, _ = checkpoint
    full, part = load_neva(directory), load_neva(directory, tensor_parallel=TensorParallel(3, 4))
    attention, whole = part.language_model.layers[1].self_attn, full.language_model.layers[1].self_attn
    rows = [*range(48, 64), *range(64 + 24, 64 + 32), *range(96 + 24, 96 + 32)]  # q | k | v of the fused weight
    assert torch.equal(attention.qkv_proj.weight, whole.qkv_proj.weight[rows])
    assert torch.equal(attention.qkv_proj.bias, whole.qkv_proj.bias[rows])
    assert torch.equal(attention.o_proj.weight, whole.o_proj.weight[:, 48:64])
    assert torch.equal(attention.o_proj.bias, whole.o_proj.bias)  # added once, after the all-reduce
    mlp, whole_mlp = part.language_model.layers[1].mlp, full.language_model.layers[1].mlp
    assert torch.equal(mlp.gate_up_proj.weight, whole_mlp.gate_up_proj.weight[[*range(36, 48), *range(84, 96)]])
    assert torch.equal(mlp.down_proj.weight, whole_mlp.down_proj.weight[:, 36:48])
    for name in ("lm_head", "language_model.embed_tokens"):
        weight, whole_weight = part.get_submodule(name).weight, full.get_submodule(name).weight
        assert weight.shape == (24, 64)
        assert torch.equal(weight[:23], whole_weight[72:]) and not weight[23].any()
    assert torch.equal(part.vision_tower.state_dict()["embeddings.patch_embedding.weight"],
                       full.vision_tower.state_dict()["embeddings.patch_embedding.weight"])


@pytest.mark.parametrize(("heads", "kv_heads", "intermediate", "processes", "refused"), [
    (6, 2, 48, 4, "over 4 processes: expected a GPU count dividing the model's 6 query heads \\(1, 2, 3, 6\\), got 4"),
    (6, 3, 48, 2, "over 2 processes: expected a GPU count that divides the model's 3 KV heads or is a multiple"),
    (8, 8, 36, 8, "over 8 processes: expected a GPU count dividing the model's intermediate_size 36, got 8"),
])
def test_a_model_the_ranks_cannot_split_is_refused(heads, kv_heads, intermediate, processes, refused):
    text = TextConfig(vocab_size=95, hidden_size=48, intermediate_size=intermediate, num_layers=1, num_heads=heads,
                      num_kv_heads=kv_heads, head_dim=8)
    with pytest.raises(NevaConfigError, match=refused):
        Layout.of(text, 0, processes)


@pytest.mark.parametrize(("heads", "kv_heads", "processes", "first_kv_heads"), [
    (8, 4, 2, [0, 2]), (8, 4, 4, [0, 1, 2, 3]), (8, 2, 4, [0, 0, 1, 1]), (4, 1, 4, [0, 0, 0, 0]),
    (16, 2, 8, [0, 0, 0, 0, 1, 1, 1, 1]),
])
def test_each_rank_keeps_the_kv_heads_its_query_heads_read(heads, kv_heads, processes, first_kv_heads):
    text = TextConfig(vocab_size=95, hidden_size=8 * heads, intermediate_size=48, num_layers=1, num_heads=heads,
                      num_kv_heads=kv_heads, head_dim=8)
    layouts = [Layout.of(text, rank, processes) for rank in range(processes)]
    assert [layout.kv_heads.start for layout in layouts] == first_kv_heads
    for layout in layouts:  # query head h reads K/V head h // (heads / kv_heads): all of them are the rank's
        read = {h // (heads // kv_heads) for h in range(layout.heads.start, layout.heads.start + layout.heads.size)}
        assert read == set(range(layout.kv_heads.start, layout.kv_heads.start + layout.kv_heads.size))


def test_world_size_not_dividing_the_heads_is_refused_before_any_tensor_is_read(checkpoint, monkeypatch):
    directory, _ = checkpoint
    files = CountingFiles()
    monkeypatch.setattr(weights, "safe_open", files)
    with pytest.raises(NevaConfigError, match="over 3 processes: expected a GPU count dividing the model's 8 query heads"):
        load_neva(directory, tensor_parallel=TensorParallel(0, 3))
    assert files.read == {}
