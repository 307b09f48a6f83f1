"""`convflow bench`: its layer tables, its measurements and its output (never its speed)."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from convflow import bench

ROOT = pathlib.Path(__file__).resolve().parent.parent
NETWORKS = ("resnet50", "vgg19", "densenet121", "inception_v1", "inception_v2", "shufflenet",
            "squeezenet", "alexnet", "zfnet512", "mobilenet_v2_depthwise")


def test_layer_tables():
    tables = bench.load_networks()
    assert set(NETWORKS) | {"tiny"} == set(tables)
    total = {name: sum(layer.count for layer in layers) for name, layers in tables.items()}
    assert total["resnet50"] == 53 and total["vgg19"] == 16 and total["alexnet"] == 5
    assert {layer.kind for layer in tables["mobilenet_v2_depthwise"]} == {"depthwise"}
    assert {layer.kind for layer in tables["resnet50"]} == {"1x1", "3x3", "other"}
    assert "grouped" in {layer.kind for layer in tables["shufflenet"]}
    stem = tables["resnet50"][0]
    assert stem.describe() == "3x224x224 -> 64 k7x7 s2 p3"
    assert stem.output_hw() == (112, 112)
    assert stem.flops(2) == 2 * 2 * 64 * 3 * 49 * 112 * 112
    for layers in tables.values():
        for layer in layers:
            assert all(o > 0 for o in layer.output_hw())


def test_layer_tables_match_the_onnx_models():
    pytest.importorskip("onnx", reason="the onnx package holds the models the tables come from")
    sys.path.insert(0, str(ROOT / "ci"))
    import extract_layers

    stored = json.loads((ROOT / "convflow" / "data" / "networks.json").read_text("utf-8"))
    assert stored == json.loads(json.dumps(extract_layers.build()))


def run_bench(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "convflow", "bench", "--no-progress", *args],
                          capture_output=True, text=True, env={**os.environ, **env}, timeout=600)


def test_bench_runs_and_writes_json(tmp_path):
    out = tmp_path / "bench.json"
    result = run_bench("--net", "tiny", "--batch", "1,2", "--repeats", "3", "--warmup", "1",
                       "--backend", "numba,numba:direct", "--json", str(out))
    assert result.returncode == 0, result.stderr
    text = result.stdout
    assert "numpy sgemm peak" in text and "tiny, batch 1" in text and "tiny, batch 2" in text
    assert "geomean time numba/numba:direct" in text
    data = json.loads(out.read_text())
    assert set(data) == {"meta", "rows", "summary"}
    assert list(data["meta"]["contenders"]) == ["numba", "numba:direct"]
    assert data["meta"]["sgemm_gflops"] > 0
    assert data["meta"]["command"].startswith("convflow bench --no-progress --net tiny")
    assert len(data["rows"]) == 2
    for row in data["rows"]:
        for name in ("numba", "numba:direct"):
            measured = row["results"][name]
            assert measured["median_ms"] > 0 and len(measured["times_ms"]) >= 3
            assert measured["gflops"] == pytest.approx(row["flops"] / measured["median_ms"] / 1e6)


def test_bench_layer_selection_and_errors():
    result = run_bench("--net", "resnet50", "--layers", "0:23:11", "--batch", "1", "--repeats", "3",
                       "--warmup", "1")
    assert result.returncode == 0, result.stderr
    assert [line.split()[0] for line in result.stdout.splitlines()
            if line.strip()[:2].strip().isdigit()] == ["0", "11", "22"]
    bad = run_bench("--net", "resnet5")
    assert bad.returncode == 2 and "unknown network 'resnet5' (did you mean 'resnet50'?)" in bad.stderr
    bad = run_bench("--net", "tiny", "--backend", "numbba")
    assert bad.returncode == 2 and "unknown backend 'numbba'" in bad.stderr


def test_compare_torch_without_torch_is_a_clear_error():
    code = ("import sys; sys.modules['torch'] = None\n"
            "from convflow.cli import main\n"
            "sys.exit(main(['bench', '--net', 'tiny', '--compare', 'torch', '--no-progress']))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert "--compare torch needs PyTorch" in result.stderr
    assert "pip install torch==2.13.0" in result.stderr


def _row(network, batch, layer, times):
    return {"network": network, "batch": batch, "layer": layer, "describe": f"layer {layer}",
            "kind": "3x3", "results": {name: {"median_ms": ms} for name, ms in times.items()}}


@pytest.mark.parametrize("contenders", [["numba"], ["numba", "torch"]])
def test_plot(tmp_path, contenders):
    pytest.importorskip("matplotlib", reason="plots are an optional extra")
    rows = [_row(net, batch, layer, {c: 1.0 + i + layer for i, c in enumerate(contenders)})
            for net, batch in (("resnet50", 1), ("resnet50", 8)) for layer in (0, 3, 7)]
    result = {"meta": {"contenders": {c: "" for c in contenders}, "date": "now", "host": "here"},
              "rows": rows}
    fig = bench.plot(result, str(tmp_path / "out.png"))
    assert (tmp_path / "out.png").stat().st_size > 1000
    assert [ax.get_title() for ax in fig.axes] == ["resnet50, batch 1", "resnet50, batch 8"]
    for ax in fig.axes:
        assert len(ax.patches) == 3 * len(contenders)  # one bar per layer and contender
        assert [t.get_text() for t in ax.get_xticklabels()] == ["#0 layer 0", "#3 layer 3", "#7 layer 7"]
        assert "lower is better" in ax.get_ylabel()
        assert [t.get_text() for t in ax.get_legend().get_texts()] == contenders
        heights = sorted(p.get_height() for p in ax.patches)
        assert heights[0] == 1.0


def test_ratios_go_one_way_in_rows_and_summaries(tmp_path):
    out = tmp_path / "bench.json"
    result = run_bench("--net", "tiny", "--batch", "1", "--repeats", "3", "--warmup", "1",
                       "--backend", "numba,numba:direct", "--json", str(out))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert ("time ratios are numba/other everywhere (per layer and in the summaries): below 1 means "
            "numba is faster") in lines
    header = next(line for line in lines if line.lstrip().startswith("# layer"))
    assert header.split()[-1] == "numba/numba:direct"
    row = next(line for line in lines if line.startswith("  0 8x16x16"))
    measured = json.loads(out.read_text())["rows"][0]["results"]
    expected = measured["numba"]["median_ms"] / measured["numba:direct"]["median_ms"]
    assert float(row.split()[-1]) == pytest.approx(expected, abs=0.006)
    assert "geomean time numba/numba:direct" in result.stdout


def test_geomean():
    assert bench.geomean([2.0, 8.0]) == pytest.approx(4.0)


def test_device_contenders_wait_for_the_device(tmp_path, monkeypatch):
    from conftest import require_backend

    require_backend("opencl")
    from convflow.backends import get_backend

    waits = []
    backend = get_backend("opencl")
    real = backend.synchronize
    monkeypatch.setattr(backend, "synchronize", lambda device: (waits.append(device), real(device)))
    contender = bench.convflow_contender("opencl")
    layer = bench.load_networks()["tiny"][0]
    x = np.ones((1, *layer.input), np.float32)
    w = np.ones(layer.weight, np.float32)
    run = contender.prepare(x, w, layer)
    y = run()
    assert waits and str(waits[0]).startswith("opencl")
    assert float(np.asarray(y.numpy())[0, 0, 5, 5]) == 8 * 9
