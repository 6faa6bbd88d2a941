"""`meter-batch bench encode`: the figures it prints add up, and its generated folder."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from meter_batch.cli import main
from meter_batch.ingest.encode_loop import DECODER_STAGES, STAGES
from meter_batch.tools.bench import encode as bench


@pytest.fixture(autouse=True)
def _short_model_timing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bench, "MODEL_SECONDS", {True: 0.2, False: 0.2})


def _bench(tmp_path: Path, config: Path, count: int) -> list[str]:
    return ["bench", "encode", "--count", str(count), "--model", str(config),
            "--pretrained", "none", "--workers", "0", "--device", "cpu", "--batch-size", "4",
            "--dir", str(tmp_path / "bench"), "--json", str(tmp_path / "r.json")]  # fmt: skip


def test_bench_encode_prints_a_table_whose_figures_agree(tmp_path, configs, capsys):
    assert main(_bench(tmp_path, configs["vit"], 6)) == 0
    table = capsys.readouterr().out
    r = json.loads((tmp_path / "r.json").read_text())
    assert r["images"] == 6  # every generated image decodes and is encoded
    assert r["bound"] == "1/(1/decode+1/model): shared CPU"  # CPU: stages share the cores
    bound = 1 / (1 / r["decode_per_s"] + 1 / r["model_per_s"])
    assert r["bound_per_s"] == pytest.approx(bound, abs=0.1)
    assert r["ratio"] == pytest.approx(r["e2e_per_s"] / r["bound_per_s"], abs=2e-3)
    assert list(r["e2e_stage_seconds"]) == list(STAGES)
    assert sum(r["e2e_stage_seconds"].values()) <= 1.01 * r["images"] / r["e2e_per_s"] + 0.01
    assert re.search(rf"\nratio e2e / bound +{r['ratio']:.3f}( +\(above 1: .*\))?\n", table)
    assert re.search(rf"\n\(c\) end-to-end img/s +{r['e2e_per_s']:,.1f} \(6 images\)\n", table)
    assert not (tmp_path / "bench" / "store").exists()  # the store is scratch


def test_bench_encode_generates_one_folder_per_count(tmp_path, configs, capsys):
    assert main(_bench(tmp_path, configs["vit"], 5)) == 0
    folder = tmp_path / "bench" / "images-5"
    first = {p: p.stat().st_mtime_ns for p in folder.rglob("*.*")}
    assert len(first) == 5
    assert main(_bench(tmp_path, configs["vit"], 5)) == 0  # reused, not rewritten
    assert {p: p.stat().st_mtime_ns for p in folder.rglob("*.*")} == first
    assert main(_bench(tmp_path, configs["vit"], 3)) == 0
    assert len(list((tmp_path / "bench" / "images-3").rglob("*.*"))) == 3
    assert json.loads((tmp_path / "r.json").read_text())["images"] == 3
    assert sorted(p.name for p in (tmp_path / "bench").iterdir()) == ["images-3", "images-5"]


SHARED_GPU = "min(decode, 1/(1/device_decode+1/model)): JPEG decoding shares the GPU"


@pytest.mark.parametrize(
    ("device", "device_decode", "bound", "per_s"),
    [
        ("cpu", None, "1/(1/decode+1/model): shared CPU", 800.0),  # 1/(1/1000+1/4000)
        ("cpu", 1500.0, "1/(1/decode+1/model): shared CPU", 800.0),  # all on the CPU
        ("cuda", None, "min(decode, model): separate hardware", 1000.0),
        ("cuda", 6000.0, SHARED_GPU, 1000.0),  # min(1000, 1/(1/6000+1/4000) = 2400)
        ("cuda", 1200.0, SHARED_GPU, 923.1),  # 1/(1/1200+1/4000): the GPU is the limit
    ],
)
def test_the_bound_depends_on_where_the_stages_run(device, device_decode, bound, per_s):
    measured = {"device": device, "device_decode_per_s": device_decode, "decode_per_s": 1000.0,
                "model_per_s": 4000.0, "e2e_per_s": 720.0}  # fmt: skip
    expected = {"bound": bound, "bound_per_s": per_s, "ratio": round(720.0 / per_s, 3)}
    if device == "cuda":  # GPU results also carry the separate-hardware ratio
        expected["ratio_to_min_decode_model"] = 0.72
    assert bench._bound(measured) == expected


def test_bench_encode_reports_the_device_decoders_rate_alone_and_during_e2e(
    tmp_path, configs, capsys
):
    args = _bench(tmp_path, configs["vit"], 6)
    assert main([*args, "--jpeg-decode", "device"]) == 0  # on the CPU: torchvision's decoder
    table = capsys.readouterr().out
    r = json.loads((tmp_path / "r.json").read_text())
    assert r["jpeg_decode"] == "device" and r["images"] == 6
    seconds = r["e2e_decoder_seconds"]
    assert list(seconds) == list(DECODER_STAGES)
    # per image of the folder (6, of which the PNGs only copied), from the e2e run's clock
    assert r["e2e_device_decode_per_s"] == pytest.approx(6 / seconds["device_decode"], rel=0.02)
    assert re.search(rf"\n\(d\) device decode img/s +{r['device_decode_per_s']:,.1f} ", table)
    assert "\ne2e decoder thread, seconds  waiting_for_workers " in table


def test_bench_encode_on_the_workers_path_has_no_device_decode_figures(tmp_path, configs):
    assert main(_bench(tmp_path, configs["vit"], 4)) == 0
    r = json.loads((tmp_path / "r.json").read_text())
    assert r["device_decode_per_s"] is None and r["e2e_device_decode_per_s"] is None
    assert r["e2e_decoder_seconds"] == {}


def test_a_ratio_well_above_one_says_the_measurement_was_disturbed():
    assert bench._above_bound_note(1.0) == "" and bench._above_bound_note(1.15) == ""
    assert "machine was busy" in bench._above_bound_note(2.13)


def test_bench_classify_times_the_users_baseline_beside_classify(tmp_path, capsys):
    from meter_batch.cli import main

    out = tmp_path / "c.json"
    argv = ["-q", "bench", "classify", "--n", "3000", "--dim", "16", "--labels", "4",
            "--dir", str(tmp_path / "b"), "--json", str(out)]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "baseline/s" in printed
    (result,) = json.loads(out.read_text())
    for cache in ("warm", "cold"):
        rates = result[f"{cache}_classify_per_s"] / result[f"{cache}_baseline_per_s"]
        assert result[f"{cache}_vs_baseline"] == pytest.approx(rates, rel=0.01)
    assert result["n"] == 3000
    # warm: the median of three passes, all listed; cold: one
    passes = result["warm_classify_passes_per_s"]
    assert len(passes) == 3 and sorted(passes)[1] == pytest.approx(
        result["warm_classify_per_s"], rel=1e-6, abs=1
    )
    assert len(result["cold_classify_passes_per_s"]) == 1
    assert f"passes (the median above): {', '.join(f'{r:,}' for r in passes)}/s" in printed
    # the few-shot heads and both BLAS kernels are timed too, and the one used is named
    assert result["warm_probe_per_s"] > 0 and result["warm_adapter_per_s"] > 0
    assert result["product_torch_per_s"] > 0 and result["product_numpy_per_s"] > 0
    assert f"classify uses {result['product_kernel']}" in printed
    assert f"adapter {result['warm_adapter_per_s']:,}/s" in printed


def test_bench_report_times_a_report_of_a_store_with_two_scored_versions(tmp_path, capsys):
    from meter_batch.cli import main

    out = tmp_path / "r.json"
    argv = ["-q", "bench", "report", "--n", "3000", "--dim", "16", "--labels", "4",
            "--dir", str(tmp_path / "b"), "--json", str(out)]  # fmt: skip
    assert main(argv) == 0
    (result,) = json.loads(out.read_text())
    assert (result["n"], result["labels"]) == (3000, 4)
    assert result["report_s"] > 0 and result["peak_rss_mib"] > 0 and result["folder_mib"] > 0
    assert f"{result['report_s']:>9.2f}" in capsys.readouterr().out
    assert not (tmp_path / "b" / "store").exists()  # the store is removed, the report kept
    html = (tmp_path / "b" / "report" / "index.html").read_text(encoding="utf-8")
    assert "What changed" in html and html.count('class="gallery" data-kind="most"') == 4


def test_bench_serve_times_each_route_over_http(tmp_path, capsys):
    from meter_batch.cli import main

    out = tmp_path / "s.json"
    argv = ["-q", "bench", "serve", "--n", "300", "--requests", "5",
            "--dir", str(tmp_path / "b"), "--json", str(out)]  # fmt: skip
    assert main(argv) == 0
    (result,) = json.loads(out.read_text())
    assert (result["n"], result["model"], result["text_requests"]) == (300, "meter-clip-tiny", 5)
    assert (result["neighbours_requests"], result["image_requests"]) == (50, 20)
    for route in ("text", "neighbours", "image"):
        # the client waits for the server's answer, so it sees at least the server's time
        assert result[f"{route}_median_ms"] >= result[f"{route}_server_median_ms"] > 0
        assert result[f"{route}_p95_ms"] >= result[f"{route}_median_ms"]
    assert result["server_peak_rss_mib"] > 100
    # the server ran as `meter-batch serve STORE --port 0` (its log line named the URL the
    # figures came from) and stopped on SIGTERM with systemd's exit code
    assert result["server_exit"] == 143
    assert f"{result['text_median_ms']:>10.1f}" in capsys.readouterr().out
    assert not (tmp_path / "b" / "serve-store").exists()  # the store is removed
