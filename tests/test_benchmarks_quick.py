"""`python -m benchmarks --quick` runs every suite end to end on this machine and writes every output."""
import json

from benchmarks.__main__ import main


def test_quick_benchmarks_write_table_json_markdown_and_plots(tmp_path, capsys):
    main(["--quick", "--out", str(tmp_path)])
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["missing_suites"] == {} and data["quick"] is True
    ops = {case["op"] for case in data["cases"]}
    assert {"rms_norm", "layer_norm", "paged_decode_attention", "flash_attention", "project_image_tokens",
            "time to first token", "decode step", "serving load"} <= ops, ops
    load = [case for case in data["cases"] if case["op"] == "serving load"]
    assert [case["size"] for case in load] == [1, 8, 32, 64]
    for case in load:
        entry = case["results"]["neva-serve"]
        assert entry["requests_per_s"] > 0 and entry["tokens_per_s"] > 0
        assert 0 < entry["ttft_p50_ms"] <= entry["ttft_p99_ms"] and 0 < entry["itl_p50_ms"] <= entry["itl_p99_ms"]
    for case in data["cases"]:
        assert case["results"] or case["missing"], case["label"]
        for entry in case["results"].values():
            assert entry["ms"] > 0
    assert {"copy_gbps", "matmul_tflops"} <= set(data["ceilings"]) and all(v > 0 for v in data["ceilings"].values())
    assert set(data["stamp"]) >= {"device", "driver", "torch", "triton", "cuda", "commit", "date"}
    markdown = (tmp_path / "results.md").read_text()
    assert "## rms_norm" in markdown and "## decode step" in markdown and "## serving load" in markdown
    assert "TTFT p50" in markdown and "req/s" in markdown
    assert data["plots"] and all((tmp_path / name).stat().st_size > 1000 for name in data["plots"])
    assert "results written to" in capsys.readouterr().out
