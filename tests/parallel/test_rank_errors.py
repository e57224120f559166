"""Under torchrun an error on one rank ends every rank within seconds, with its message printed once (by rank 0)."""
from __future__ import annotations

import shutil

from safetensors.torch import load_file, save_file

from neva_model.cli import DEFAULT_MODEL
from neva_model.train import DEFAULT_EXAMPLES

from tests.parallel.conftest import HANG_S, torchrun

MISSING = "language_model.model.layers.2.mlp.down_proj.weight"
ASK = ["ask", "--image", str(DEFAULT_EXAMPLES / "scene-1.png"), "Describe the image."]


def test_a_tensor_missing_on_one_rank_ends_all_ranks_with_its_message(tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(DEFAULT_MODEL, broken)
    tensors = load_file(broken / "model.safetensors")
    assert MISSING in tensors
    del tensors[MISSING]
    save_file(tensors, broken / "model.safetensors", metadata={"format": "pt"})
    result, seconds = torchrun(2, "-m", "tests.parallel.tp_worker", "neva", f"{DEFAULT_MODEL},{broken}", *ASK)
    assert result.returncode != 0 and result.stdout == ""
    errors = [line for line in result.stderr.splitlines() if line.startswith("neva: error:")]
    assert errors == ["neva: error: rank 1: the checkpoint lacks 1 tensor(s): "
                      "language_model.layers.2.mlp.down_proj.weight"], result.stderr[-3000:]
    assert seconds < HANG_S / 2  # ended by the ranks' agreement, not by a collective's timeout


def test_a_failure_of_one_rank_while_generating_ends_all_ranks(tmp_path):
    """After loading the ranks do not agree step by step: the failing rank exits, its peers' next collective fails
    at once (gloo sees the closed connection) and torchrun stops the rest."""
    result, seconds = torchrun(2, "-m", "tests.parallel.tp_worker", "neva", f"{DEFAULT_MODEL},{DEFAULT_MODEL}", *ASK,
                               env={"FAIL_DECODE_ON_RANK": "1"})
    assert result.returncode != 0 and result.stdout == ""
    assert "neva: error: rank 1: internal error, RuntimeError: decode step failed (test)\n" in result.stderr
    assert seconds < HANG_S / 2
