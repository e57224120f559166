"""`python -m neva_model.train` end to end at a tiny scale: it writes a complete checkpoint, the same for a seed."""
import json

import pytest

from neva_model.train.__main__ import main
from neva_model.weights import load_neva

pytestmark = pytest.mark.usefixtures("single_thread")

CHECKPOINT_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
                    "preprocessor_config.json")


def _train(directory, seed: int) -> None:
    args = ["--seed", str(seed), "--scale", "0.004", "--out", str(directory / "model"),
            "--examples", str(directory / "examples")]
    assert main(args) == 0


def test_same_seed_same_checkpoint_and_report_another_seed_another_model(tmp_path):
    _train(tmp_path / "a", 3)
    _train(tmp_path / "b", 3)
    _train(tmp_path / "c", 4)
    for name in CHECKPOINT_FILES:
        assert (tmp_path / "a" / "model" / name).read_bytes() == (tmp_path / "b" / "model" / name).read_bytes(), name
    for name in ("scene-1.png", "scene-4.png", "questions.json"):
        assert (tmp_path / "a" / "examples" / name).read_bytes() == (tmp_path / "b" / "examples" / name).read_bytes()
    report, again = (json.loads((tmp_path / run / "model" / "training_report.json").read_text()) for run in "ab")
    assert {**report, "command": None} == {**again, "command": None}  # the command names its --out
    assert report["command"] == "python -m neva_model.train --seed 3 --scale 0.004 --out " \
        f"{tmp_path / 'a' / 'model'} --examples {tmp_path / 'a' / 'examples'}"
    assert set(report["loss"]) == {"clip", "lm", "stage1", "stage2"}
    assert all(0 <= r["accuracy"] <= 1 and r["total"] > 0 for r in report["accuracy"].values())
    load_neva(tmp_path / "a" / "model")  # complete and consistent
    assert (tmp_path / "a" / "model" / "model.safetensors").read_bytes() != \
        (tmp_path / "c" / "model" / "model.safetensors").read_bytes()
