"""The NeVA tokenizer: text <-> ids, BOS/EOS, and the image placeholder that becomes the image's tokens.

`load_tokenizer(model_dir)` reads `tokenizer.json` with the `tokenizers` library, or else `tokenizer.model`
(sentencepiece, through transformers' LlamaTokenizer, offline), plus `tokenizer_config.json` and
`special_tokens_map.json` where present (BOS/EOS tokens, whether BOS is added; the map wins, as in transformers).
"""
from __future__ import annotations

import importlib.util
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from neva_kernels.errors import NevaError, NevaTypeError, NevaValueError

from .config import NevaConfig, read_json_object
from .prompts import DEFAULT_IMAGE_PLACEHOLDER


class NevaTokenizerError(NevaError, ValueError):
    """A tokenizer cannot be loaded or lacks a token it is asked for; the message says which and why."""


class NevaTokenizer:
    """Encodes prompts and decodes answers for one model; build it with `load_tokenizer`.

    `encode_plain` maps text to ids without any special token added; `decode_ids` maps ids back.
    """

    def __init__(
        self,
        encode_plain: Callable[[str], list[int]],
        decode_ids: Callable[[list[int], bool], str],
        token_to_id: Callable[[str], int | None],
        vocab_size: int,
        *,
        bos_token: str | None,
        eos_token: str | None,
        add_bos_token: bool,
        image_token: str = DEFAULT_IMAGE_PLACEHOLDER,
        source: str = "tokenizer",
    ):
        self._encode_plain = encode_plain
        self._decode_ids = decode_ids
        self._token_to_id = token_to_id
        self.vocab_size = vocab_size
        self.bos_token = bos_token
        self.eos_token = eos_token
        self.add_bos_token = add_bos_token
        self.image_token = image_token
        self.source = source

    def __repr__(self) -> str:
        return (f"NevaTokenizer({self.source!r}, vocab_size={self.vocab_size}, bos={self.bos_token!r}, "
                f"eos={self.eos_token!r}, add_bos_token={self.add_bos_token})")

    @property
    def bos_token_id(self) -> int:
        return self._required_id(self.bos_token, "BOS")

    @property
    def eos_token_id(self) -> int:
        return self._required_id(self.eos_token, "EOS")

    @property
    def image_token_id(self) -> int:
        return self._required_id(self.image_token, "image placeholder")

    def encode(self, text: str, add_bos: bool | None = True) -> list[int]:
        """Token ids of `text`; BOS first when `add_bos` (None: as the tokenizer config says). Never adds EOS.

        Special tokens written in the text (such as the image placeholder) become their single ids.
        """
        if not isinstance(text, str):
            raise NevaTypeError(f"text must be a str, got {type(text).__name__}")
        ids = list(self._encode_plain(text))
        if self.add_bos_token if add_bos is None else add_bos:
            ids.insert(0, self.bos_token_id)
        return ids

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        """Text of `ids` (a sequence of ints or a 1-D integer tensor)."""
        return self._decode_ids(self._checked_ids(ids, "ids"), skip_special_tokens)

    def expand_image_tokens(self, ids, num_image_tokens: int, num_images: int | None = None) -> list[int]:
        """Replace each image placeholder id in `ids` by `num_image_tokens` copies of it.

        The copies mark the rows the model fills with the projected image features. With `num_images`, the
        number of placeholders must equal it.
        """
        ids = self._checked_ids(ids, "ids")
        if isinstance(num_image_tokens, bool) or not isinstance(num_image_tokens, int) or num_image_tokens < 1:
            raise NevaValueError(f"num_image_tokens must be an int >= 1, got {num_image_tokens!r}")
        image_id = self.image_token_id
        found = ids.count(image_id)
        if num_images is not None and found != num_images:
            raise NevaValueError(
                f"the prompt holds {found} image placeholder(s) {self.image_token!r} but {num_images} image(s) "
                "were given"
            )
        expanded: list[int] = []
        for token in ids:
            expanded.extend([token] * num_image_tokens if token == image_id else (token,))
        return expanded

    def decode_generated(self, ids: list[int]) -> str:
        """Text of generated ids; ids past the tokenizer's vocabulary (llava-hf pads the model's embedding, e.g.
        to 32064 rows) decode to nothing."""
        return self.decode([t for t in ids if t < self.vocab_size])

    def _required_id(self, token: str | None, role: str) -> int:
        if token is None:
            raise NevaTokenizerError(f"{self.source} defines no {role} token")
        token_id = self._token_to_id(token)
        if token_id is None:
            raise NevaTokenizerError(f"{role} token {token!r} is not in the vocabulary of {self.source}")
        return token_id

    def _checked_ids(self, ids, name: str) -> list[int]:
        if isinstance(ids, torch.Tensor):
            if ids.dim() != 1 or ids.dtype.is_floating_point or ids.dtype.is_complex or ids.dtype == torch.bool:
                raise NevaValueError(f"{name} must be a 1-D integer tensor, got {ids.dtype} {list(ids.shape)}")
            ids = ids.tolist()
        if isinstance(ids, (str, bytes)) or not isinstance(ids, Sequence):
            raise NevaTypeError(f"{name} must be a sequence of ints, got {type(ids).__name__}")
        for position, token in enumerate(ids):
            if isinstance(token, bool) or not isinstance(token, int):
                raise NevaTypeError(f"{name}[{position}] must be an int, got {type(token).__name__}")
            if not 0 <= token < self.vocab_size:
                raise NevaValueError(f"{name}[{position}] = {token} is outside the vocabulary [0, {self.vocab_size})")
        return list(ids)


def model_input_ids(tokenizer: NevaTokenizer, prompt: str, config: NevaConfig, num_images: int) -> list[int]:
    """The ids the model is fed for `prompt`: BOS, each image placeholder expanded to the image's tokens, marked
    with the model config's image_token_index (whatever id the tokenizer gives the placeholder)."""
    ids = tokenizer.expand_image_tokens(tokenizer.encode(prompt), config.image_tokens_per_image, num_images)
    return [config.image_token_index if t == tokenizer.image_token_id else t for t in ids]


def load_tokenizer(model_dir, image_token: str = DEFAULT_IMAGE_PLACEHOLDER) -> NevaTokenizer:
    """Load the tokenizer stored in `model_dir` (see the module docstring for the files it reads)."""
    directory = Path(model_dir)
    if not directory.is_dir():
        raise NevaTokenizerError(f"tokenizer directory {str(directory)!r} does not exist")
    config = _special_token_config(directory)
    if (directory / "tokenizer.json").is_file():
        return _from_tokenizer_json(directory / "tokenizer.json", config, image_token)
    if (directory / "tokenizer.model").is_file():
        return _from_sentencepiece(directory, config, image_token)
    raise NevaTokenizerError(f"{str(directory)!r} holds neither tokenizer.json nor tokenizer.model")


def _special_token_config(directory: Path) -> dict:
    """bos_token, eos_token and add_bos_token from tokenizer_config.json, overridden by special_tokens_map.json."""
    merged: dict = {}
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        data = _read_json(directory / name)
        for key in ("bos_token", "eos_token"):
            if key in data:
                merged[key] = _token_content(data[key], directory / name, key)
        if "add_bos_token" in data:
            if not isinstance(data["add_bos_token"], bool):
                raise NevaTokenizerError(f"{directory / name}: add_bos_token must be true or false")
            merged["add_bos_token"] = data["add_bos_token"]
    return merged


def _read_json(path: Path) -> dict:
    return read_json_object(path, NevaTokenizerError) if path.is_file() else {}


def _token_content(value, path: Path, key: str) -> str | None:
    # transformers writes special tokens either as a string or as an AddedToken dict with a "content" field.
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return value["content"]
    raise NevaTokenizerError(f"{path}: {key} must be a string or an object with a 'content' string, got {value!r}")


def _token_or_default(config: dict, key: str, default: str, token_to_id) -> str | None:
    # Without a config, LLaMA's <s> / </s> are assumed when the vocabulary has them.
    if key in config:
        return config[key]
    return default if token_to_id(default) is not None else None


def _from_tokenizer_json(path: Path, config: dict, image_token: str) -> NevaTokenizer:
    from tokenizers import Tokenizer

    try:
        backend = Tokenizer.from_file(str(path))
    except Exception as error:  # tokenizers raises its own exception types for malformed files
        raise NevaTokenizerError(f"cannot load {path}: {error}") from error
    return _assemble(
        encode_plain=lambda text: backend.encode(text, add_special_tokens=False).ids,
        decode_ids=lambda ids, skip: backend.decode(ids, skip_special_tokens=skip),
        token_to_id=backend.token_to_id,
        vocab_size=backend.get_vocab_size(with_added_tokens=True),
        config=config, image_token=image_token, source=str(path),
    )


def _sentencepiece_available() -> bool:
    # transformers reads a sentencepiece model through the sentencepiece package and its protobuf schema.
    return all(_installed(name) for name in ("transformers", "sentencepiece", "google.protobuf"))


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # a missing parent package ("google") raises instead of answering None
        return False


def _from_sentencepiece(directory: Path, config: dict, image_token: str) -> NevaTokenizer:
    path = directory / "tokenizer.model"
    if not _sentencepiece_available():
        raise NevaTokenizerError(
            f"{path} is a sentencepiece model, which needs the transformers, sentencepiece and protobuf packages: "
            "pip install 'neva[sentencepiece]'"
        )
    from transformers import LlamaTokenizer

    try:
        backend = LlamaTokenizer.from_pretrained(str(directory), local_files_only=True)
    except Exception as error:  # transformers and sentencepiece raise many types for a bad model file
        raise NevaTokenizerError(f"cannot load {path}: {error}") from error

    def token_to_id(token: str) -> int | None:
        token_id = backend.convert_tokens_to_ids(token)
        # convert_tokens_to_ids answers the unknown token's id for a token that is not in the vocabulary.
        unknown = token_id == backend.unk_token_id and token != backend.unk_token
        return None if token_id is None or unknown else token_id

    return _assemble(
        encode_plain=lambda text: backend.encode(text, add_special_tokens=False),
        decode_ids=lambda ids, skip: backend.decode(ids, skip_special_tokens=skip),
        token_to_id=token_to_id,
        vocab_size=len(backend),
        config=config, image_token=image_token, source=str(path),
    )


def _assemble(*, encode_plain, decode_ids, token_to_id, vocab_size, config, image_token, source) -> NevaTokenizer:
    bos = _token_or_default(config, "bos_token", "<s>", token_to_id)
    eos = _token_or_default(config, "eos_token", "</s>", token_to_id)
    return NevaTokenizer(
        encode_plain, decode_ids, token_to_id, vocab_size,
        bos_token=bos, eos_token=eos, add_bos_token=config.get("add_bos_token", bos is not None),
        image_token=image_token, source=source,
    )
