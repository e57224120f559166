"""`python -m benchmarks --quick` runs every suite end to end on this machine and writes every output."""
import json

from benchmarks.__main__ import main


def test_quick_benchmarks_write_table_json_markdown_and_plots(tmp_path, capsys):
    main(["--quick", "--out", str(tmp_path)])
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["missing_suites"] == {} and data["quick"] is True
    ops = {case["op"] for case in data["cases"]}
    assert {"rms_norm", "layer_norm", "paged_decode_attention", "flash_attention", "project_image_tokens",
            "time to first token", "decode step"} <= ops, ops
    for case in data["cases"]:
        assert case["results"] or case["missing"], case["label"]
        for entry in case["results"].values():
            assert entry["ms"] > 0
    assert {"copy_gbps", "matmul_tflops"} <= set(data["ceilings"]) and all(v > 0 for v in data["ceilings"].values())
    assert set(data["stamp"]) >= {"device", "driver", "torch", "triton", "cuda", "commit", "date"}
    markdown = (tmp_path / "results.md").read_text()
    assert "## rms_norm" in markdown and "## decode step" in markdown
    assert data["plots"] and all((tmp_path / name).stat().st_size > 1000 for name in data["plots"])
    assert "results written to" in capsys.readouterr().out
