"""`neva` reads torchrun's environment: a malformed one, or one without torchrun's rendezvous, is one clear line;
`neva serve` is refused under torchrun (tensor parallelism is for `neva ask`). An error of one rank alone names the
rank; one that every rank has alike (a malformed argument) is printed by rank 0 only."""
from __future__ import annotations

import pytest

from neva_model import cli
from neva_model.train import DEFAULT_EXAMPLES

ASK = ["ask", "--image", str(DEFAULT_EXAMPLES / "scene-1.png"), "Describe the image."]


@pytest.mark.parametrize(("env", "argv", "status", "message"), [
    ({"WORLD_SIZE": "two"}, ASK, 1, "rank 0: environment variable WORLD_SIZE must be an int >= 1, got 'two'"),
    ({"WORLD_SIZE": "2", "RANK": "2"}, ASK, 1, "rank 2: environment variable RANK must be below WORLD_SIZE=2, got 2"),
    ({"WORLD_SIZE": "2", "RANK": "1"}, ASK, 1, "rank 1: cannot join the process group of WORLD_SIZE=2 (start neva "
                                                "with torchrun): "),
    ({"WORLD_SIZE": "2", "RANK": "0"}, ["serve"], 2, "neva serve runs in one process, not under torchrun "
                                                     "(WORLD_SIZE=2); tensor parallelism is for neva ask"),
    ({"WORLD_SIZE": "2", "RANK": "1"}, ["serve"], 2, None),  # rank 0 says it
])
def test_torchrun_environment_errors_are_one_line(monkeypatch, capsys, env, argv, status, message):
    for name in ("MASTER_ADDR", "MASTER_PORT", "RANK", "LOCAL_RANK", "WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert cli.main(argv) == status
    out, err = capsys.readouterr()
    assert out == ""
    assert err == "" if message is None else err.startswith(f"neva: error: {message}") and err.count("\n") == 1, err
