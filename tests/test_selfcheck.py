"""The main job's kernel self-check runs every op and reports the backends it cannot run with a reason."""
import torch

from neva_kernels import backends, selfcheck


def test_selfcheck_runs_every_op_on_every_able_backend(capsys):
    device = torch.device("cpu")
    rows = selfcheck.run(device, torch.float32, repeats=1)
    assert {(r["op"], r["backend"]) for r in rows} == {(op, b) for op in backends.OPS for b in backends.BACKENDS}
    for row in rows:
        assert row["status"] == "ok" or row["status"].startswith("unavailable: "), row
        if row["backend"] == "torch":
            assert row["status"] == "ok" and row["error"] < 1e-5
    selfcheck.print_table(rows, device, torch.float32)
    assert "project_image_tokens" in capsys.readouterr().out


def test_selfcheck_flags_a_wrong_backend(monkeypatch):
    wrong = selfcheck.CALLS["rms_norm"]
    off_unless_reference = (lambda i, b: wrong(i, b) + (0 if i["x"].dtype == torch.float64 else 0.1))
    monkeypatch.setitem(selfcheck.CALLS, "rms_norm", off_unless_reference)
    rows = selfcheck.run(torch.device("cpu"), torch.float32, repeats=1)
    assert [r["status"] for r in rows if r["op"] == "rms_norm" and r["backend"] == "torch"] == ["WRONG"]
