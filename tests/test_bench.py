"""`convflow bench`: its layer tables, its worker processes, its measurements and its output
(never its speed)."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from convflow import _bench_worker as worker
from convflow import bench

import reference
from conftest import assert_close

ROOT = pathlib.Path(__file__).resolve().parent.parent
NETWORKS = ("resnet50", "vgg19", "densenet121", "inception_v1", "inception_v2", "shufflenet",
            "squeezenet", "alexnet", "zfnet512", "mobilenet_v2_depthwise", "large-kernels")


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
    assert "numpy sgemm peak" in text and "tiny, batch 1, forward" in text
    assert "tiny, batch 2, forward" in text
    assert "mode: isolated: each contender in its own worker process" in text
    assert "geomean time numba/numba:direct" in text
    data = json.loads(out.read_text())
    assert set(data) == {"meta", "rows", "sequences", "summary"}
    meta = data["meta"]
    assert list(meta["contenders"]) == ["numba", "numba:direct"]
    assert meta["mode"] == {"processes": "isolated", "torch_first": False, "busy_core": False}
    assert meta["mode_label"] == "isolated" and meta["passes"] == ["forward"]
    assert meta["sgemm_gflops"] > 0 and meta["busy_core"] is None
    assert meta["command"].startswith("convflow bench --no-progress --net tiny")
    # Each contender in a process of its own, which imported convflow and numba, not torch.
    pids = {w["pid"] for w in meta["workers"].values()}
    assert len(pids) == 2 and os.getpid() not in pids
    for name, info in meta["workers"].items():
        assert {"convflow", "numba"} <= set(info["modules"]) and "torch" not in info["modules"]
        assert info["settings"][name]["threading_layer"] in ("omp", "tbb", "workqueue")
        assert int(info["settings"][name]["threads"]) >= 1
    assert len(data["rows"]) == 2 and data["sequences"] == []
    for row in data["rows"]:
        assert row["pass"] == "forward"
        for name in ("numba", "numba:direct"):
            measured = row["results"][name]
            assert measured["median_ms"] > 0 and len(measured["times_ms"]) == 3
            assert measured["gflops"] == pytest.approx(row["flops"] / measured["median_ms"] / 1e6)
    assert set(data["summary"]) == {"forward"}
    assert set(data["summary"]["forward"]["ratios"]) == {"numba/numba:direct"}
    assert set(data["summary"]["forward"]["three_by_three"]) == {"numba", "numba:direct"}


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


FAKE_TORCH = """\
import os, sys, time
__version__ = "0.0-fake"
def set_num_threads(n): pass
def get_num_threads(): return 1
def get_num_interop_threads(): return 1
def from_numpy(array):
    behaviour = os.environ["FAKE_TORCH"]
    sys.stderr.write(f"fake torch: {behaviour} on purpose\\n")
    sys.stderr.flush()
    if behaviour == "import-error":
        pass
    elif behaviour == "crash":
        os._exit(3)
    elif behaviour == "hang":
        time.sleep(600)
    raise RuntimeError("fake torch cannot convolve")
if os.environ["FAKE_TORCH"] == "import-error":
    raise ImportError("fake torch refuses to load")
"""


def fake_torch(tmp_path: pathlib.Path, behaviour: str) -> dict[str, str]:
    """An environment whose workers import a stand-in torch that misbehaves as told."""
    package = tmp_path / "fake" / "torch"
    (package / "nn").mkdir(parents=True)
    (package / "__init__.py").write_text(FAKE_TORCH)
    (package / "nn" / "__init__.py").write_text("")
    (package / "nn" / "functional.py").write_text("")
    path = os.pathsep.join(p for p in (str(tmp_path / "fake"), os.environ.get("PYTHONPATH")) if p)
    return {"PYTHONPATH": path, "FAKE_TORCH": behaviour}


def one_line_error(result: subprocess.CompletedProcess, code: int, *parts: str) -> None:
    assert result.returncode == code, result.stdout + result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr, result.stderr
    for part in parts:
        assert part in result.stderr, result.stderr


def test_a_torch_that_fails_to_import_in_its_worker_is_a_bad_argument(tmp_path):
    result = run_bench("--net", "tiny", "--layers", "0:1", "--repeats", "1", "--warmup", "1",
                       "--compare", "torch", **fake_torch(tmp_path, "import-error"))
    one_line_error(result, 2, "convflow bench: error: --compare torch needs PyTorch (fake torch "
                              "refuses to load); install it with pip install torch==2.13.0")
    assert result.stdout == ""


@pytest.mark.parametrize("behaviour, message", [
    ("crash", r"torch \(worker pid \d+\) exited with status 3 while measuring tiny batch 1 "
              r"forward layer #0; its stderr: fake torch: crash on purpose$"),
    ("raise", r"torch \(worker pid \d+\) failed while measuring tiny batch 1 forward layer #0: "
              r"RuntimeError: fake torch cannot convolve$"),
    ("hang", r"torch \(worker pid \d+\) gave no answer within 3 s while measuring tiny batch 1 "
             r"forward layer #0 \(--timeout 3\); stopped it; its stderr: fake torch: hang on "
             r"purpose$"),
])
def test_a_worker_that_dies_fails_or_hangs_is_a_one_line_error(tmp_path, behaviour, message):
    import re

    result = run_bench("--net", "tiny", "--layers", "0:1", "--repeats", "1", "--warmup", "1",
                       "--compare", "torch", "--timeout", "3", "--busy-core",
                       **fake_torch(tmp_path, behaviour))
    one_line_error(result, 1, "convflow bench: error: ")
    assert re.search(message, result.stderr.strip()), result.stderr
    # The busy process started for the measurement is gone as well.
    pid = int(re.search(r"busy core: .*, pid (\d+)", result.stdout).group(1))
    assert not pathlib.Path(f"/proc/{pid}").exists() or _zombie(pid)


def _zombie(pid: int) -> bool:
    try:
        return pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def test_worker_protocol_measures_a_layer_and_reports_its_settings():
    layer = bench.load_networks()["tiny"][0]
    process = bench.WorkerProcess("numba", timeout=300)
    try:
        info = process.request({"op": "start", "threads": None, "torch_first": False,
                                "contenders": [{"name": "numba", "kind": "convflow"}]}, "starting")
        assert info["pid"] == process.process.pid != os.getpid()
        assert info["versions"]["numba"] and "torch" not in info["modules"]
        assert info["settings"]["numba"]["threads"]
        answer = process.request({"op": "measure", "contenders": ["numba"],
                                  "layer": bench.layer_spec(layer), "batch": 1,
                                  "pass": "backward", "warmup": 1, "repeats": 2,
                                  "min_seconds": 0}, "measuring")
        assert len(answer["times_ms"]["numba"]) == 2
        assert all(t > 0 for t in answer["times_ms"]["numba"])
        with pytest.raises(bench.WorkerError, match=r"numba \(worker pid \d+\) failed while "
                                                    r"asking nonsense: ValueError: unknown request"):
            process.request({"op": "nonsense"}, "asking nonsense")
        process.process.kill()
        process.process.wait()
        with pytest.raises(bench.WorkerError, match=r"exited with status -9 while measuring again"):
            process.request({"op": "sgemm"}, "measuring again")
    finally:
        process.close()


def test_the_busy_process_is_killed_when_the_block_fails():
    with pytest.raises(KeyboardInterrupt), bench.busy_core(True) as busy:
        pid = busy["pid"]
        assert pathlib.Path(f"/proc/{pid}").exists()
        raise KeyboardInterrupt
    assert not pathlib.Path(f"/proc/{pid}").exists() or _zombie(pid)
    assert busy["cpu_seconds"] is not None


# Layers that exercise each pass's geometry: the tiny layer, and one strided, dilated,
# grouped layer with asymmetric padding (torch pads it explicitly).
PASS_LAYERS = [
    bench.load_networks()["tiny"][0],
    bench.Layer("t", 3, (4, 11, 9), (6, 2, 3, 2), (2, 1), ((2, 0), (1, 2)), (1, 2), 2),
]


def _expected(kind, x, w, dy, layer):
    if kind == "forward":
        return [reference.conv(x, w, None, layer.stride, layer.padding, layer.dilation,
                               layer.groups)]
    gx, gw, _ = reference.conv_backward(dy, x, w, layer.stride, layer.padding, layer.dilation,
                                        layer.groups)
    return {"backward-data": [gx], "backward-weight": [gw], "backward": [gx, gw]}[kind]


def _computed(kind, output):
    if kind == "forward":
        return [output]
    grads = [np.asarray(g) for g in output[:2] if g is not None]
    return grads


@pytest.mark.parametrize("contender", ["numba", "torch"])
@pytest.mark.parametrize("kind", bench.PASSES)
@pytest.mark.parametrize("layer", PASS_LAYERS, ids=["tiny", "asymmetric"])
def test_every_pass_computes_the_gradients_it_times(contender, kind, layer):
    if contender == "torch":
        pytest.importorskip("torch", reason="torch is a benchmark contender only")
        timed = worker.torch_contender(None)
    else:
        timed = worker.convflow_contender("numba")
    spec = bench.layer_spec(layer)
    x, w, dy = worker.operands(spec, 2)
    run = timed.prepare(x, w, dy, spec, kind)
    assert run is not None
    computed = [np.asarray(a) for a in _computed(kind, run())]
    expected = _expected(kind, x, w, dy, layer)
    assert [a.shape for a in computed] == [e.shape for e in expected]
    for a, e in zip(computed, expected):
        assert_close(a, e)


def test_operands_are_the_same_in_every_worker():
    spec = bench.layer_spec(bench.load_networks()["resnet50"][1])
    first, again = worker.operands(spec, 1), worker.operands(spec, 1)
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)
    assert [a.shape for a in first] == [(1, 64, 56, 56), (64, 64, 1, 1), (1, 64, 56, 56)]


@pytest.fixture(scope="module")
def sequence_run(tmp_path_factory):
    """One run with torch, two passes and the back-to-back totals, shared by the tests below."""
    pytest.importorskip("torch", reason="torch is a benchmark contender only")
    out = tmp_path_factory.mktemp("sequence") / "bench.json"
    result = run_bench("--net", "tiny", "--batch", "1", "--repeats", "2", "--warmup", "1",
                       "--compare", "torch", "--pass", "forward,backward", "--sequence",
                       "--json", str(out))
    assert result.returncode == 0, result.stderr
    return result, json.loads(out.read_text()), out


def test_sequence_and_backward_against_torch(sequence_run):
    result, data, _ = sequence_run
    assert "tiny, batch 1, backward" in result.stdout
    assert "back to back: 1 layers, 1 convs" in result.stdout
    assert "back to back, tiny batch 1: numba" in result.stdout
    meta = data["meta"]
    assert meta["passes"] == ["forward", "backward"] and meta["sequence"] is True
    torch_worker = meta["workers"]["torch"]
    assert "convflow" not in torch_worker["modules"] and "numba" not in torch_worker["modules"]
    assert torch_worker["settings"]["torch"]["torch.set_num_threads"] == "not called (torch's default)"
    assert [r["pass"] for r in data["rows"]] == ["forward", "backward"]
    forward, backward = data["rows"]
    assert backward["flops"] == 2 * forward["flops"]
    assert [(s["network"], s["pass"]) for s in data["sequences"]] == [("tiny", "forward"),
                                                                      ("tiny", "backward")]
    for seq in data["sequences"]:
        assert seq["convs"] == 1 and seq["weighted_by"] == "count"
        for name in ("numba", "torch"):
            assert len(seq["results"][name]["rounds_ms"]) == 2
    assert set(data["summary"]) == {"forward", "backward"}
    ratio = data["summary"]["backward"]["sequence"]["numba/torch"]["tiny batch 1"]
    totals = data["sequences"][1]["results"]
    assert ratio == pytest.approx(totals["numba"]["median_ms"] / totals["torch"]["median_ms"],
                                  rel=1e-2)


def test_readme_tables_render_the_mode_the_passes_and_the_totals(sequence_run, tmp_path,
                                                                 monkeypatch):
    sys.path.insert(0, str(ROOT / "ci"))
    import readme_tables

    _, _, path = sequence_run
    (tmp_path / "run.json").write_text(path.read_text())
    monkeypatch.setattr(readme_tables, "BENCH_DIR", tmp_path)
    table = readme_tables.bench_table()
    assert "numba 2 threads" in table or "numba 1 threads" in table
    assert "Pass: forward; mode: isolated (each contender in its own process)." in table
    assert "Pass: backward; mode: isolated (each contender in its own process)." in table
    assert table.count("| numba / torch | 1 | 1 |") == 2
    assert table.count("| back to back: network | batch | convs | numba ms | torch ms | "
                       "numba / torch |") == 2
    assert "| tiny | 1 | 1 | " in table


def test_torch_first_and_a_busy_core(tmp_path):
    pytest.importorskip("torch", reason="torch is a benchmark contender only")
    out = tmp_path / "bench.json"
    result = run_bench("--net", "tiny", "--layers", "0:1", "--batch", "1", "--repeats", "1",
                       "--warmup", "1", "--torch-first", "--threads", "1", "--busy-core", "--json",
                       str(out))
    assert result.returncode == 0, result.stderr
    assert "torch-first: torch imported and one torch conv run before convflow" in result.stdout
    meta = json.loads(out.read_text())["meta"]
    assert meta["mode"] == {"processes": "isolated", "torch_first": True, "busy_core": True}
    assert meta["mode_label"] == "isolated+torch-first+busy-core"
    numba = meta["workers"]["numba"]
    assert "torch" in numba["modules"]
    assert numba["settings"]["torch (imported first)"]["torch.get_num_threads()"] == 1
    assert numba["settings"]["torch (imported first)"]["torch.set_num_threads"] == 1
    busy = meta["busy_core"]
    assert busy["cpu_seconds"] is not None and busy["wall_seconds"] > 0
    assert not pathlib.Path(f"/proc/{busy['pid']}").exists() or _zombie(busy["pid"])


def test_in_process_runs_every_contender_in_one_worker(tmp_path):
    out = tmp_path / "bench.json"
    result = run_bench("--net", "tiny", "--layers", "0:1", "--batch", "1", "--repeats", "1",
                       "--warmup", "1", "--backend", "numba,numba:direct", "--in-process",
                       "--json", str(out))
    assert result.returncode == 0, result.stderr
    assert "mode: IN-PROCESS: all contenders in one process" in result.stdout
    meta = json.loads(out.read_text())["meta"]
    assert meta["mode"]["processes"] == "in-process" and meta["mode_label"] == "in-process"
    workers = meta["workers"]
    assert workers["numba"]["pid"] == workers["numba:direct"]["pid"]
    assert workers["numba"]["shared_with"] == ["numba:direct"]
    assert list(workers["numba"]["settings"]) == ["numba"]


def _row(network, batch, layer, times, kind="forward"):
    return {"network": network, "batch": batch, "layer": layer, "describe": f"layer {layer}",
            "kind": "3x3", "pass": kind,
            "results": {name: {"median_ms": ms} for name, ms in times.items()}}


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


def test_plot_has_a_panel_per_pass_and_no_bar_where_a_contender_cannot_run(tmp_path):
    pytest.importorskip("matplotlib", reason="plots are an optional extra")
    rows = [_row("tiny", 1, 0, {"numba": 1.0, "torch": 2.0}, kind)
            for kind in ("forward", "backward")]
    del rows[1]["results"]["torch"]  # n/a in the table
    result = {"meta": {"contenders": {"numba": "", "torch": ""}, "date": "now", "host": "here",
                       "mode_label": "isolated"}, "rows": rows}
    fig = bench.plot(result, str(tmp_path / "out.png"))
    assert [ax.get_title() for ax in fig.axes] == ["tiny, batch 1", "tiny, batch 1, backward"]
    assert "isolated" in fig._suptitle.get_text()
    heights = [p.get_height() for p in fig.axes[1].patches]
    assert heights[0] == 1.0 and np.isnan(heights[1])


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
    contender = worker.convflow_contender("opencl")
    spec = bench.layer_spec(bench.load_networks()["tiny"][0])
    x = np.ones((1, *spec["input"]), np.float32)
    w = np.ones(spec["weight"], np.float32)
    dy = np.ones((1, spec["weight"][0], *spec["output"]), np.float32)
    run = contender.prepare(x, w, dy, spec, "forward")
    y = run()
    assert waits and str(waits[0]).startswith("opencl")
    assert float(np.asarray(y.numpy())[0, 0, 5, 5]) == 8 * 9
    waits.clear()
    grad_input, grad_weight, _ = contender.prepare(x, w, dy, spec, "backward")()
    assert waits and grad_input is not None and grad_weight is not None


def test_large_kernel_set():
    layers = bench.load_networks()["large-kernels"]
    assert len(layers) == 27
    filters = [layer for layer in layers if layer.input[1] >= 1024]
    assert sorted({(layer.input, layer.weight[2]) for layer in filters}) == sorted(
        ((c, s, s), k) for c in (1, 3) for s in (1024, 2048) for k in (15, 31, 63, 127))
    assert all(layer.output_hw() == layer.input[1:] for layer in layers)  # 'same' padding
    kernels = [layer.weight[2:] for layer in layers if layer.input[1] < 1024]
    assert kernels == [(31, 31), (29, 29), (27, 27), (13, 13), (51, 51), (51, 5), (5, 51),
                       (7, 7), (7, 7), (7, 7), (7, 7)]


def test_scipy_contenders_match_convflow_where_they_apply():
    import convflow

    rng = np.random.default_rng(0)
    layer = bench.Layer("t", 0, (3, 40, 36), (3, 1, 9, 7), (1, 1), ((4, 4), (3, 3)), (1, 1), 3)
    spec = bench.layer_spec(layer)
    x = rng.standard_normal((1, *layer.input)).astype(np.float32)
    w = rng.standard_normal(layer.weight).astype(np.float32)
    dy = np.ones((1, 3, *layer.output_hw()), np.float32)
    expected = convflow.conv2d(x, w, None, 1, layer.padding, 1, 3)[0]
    for name in ("scipy-fft", "scipy-oa"):
        contender = worker.scipy_contender(name)
        run = contender.prepare(x, w, dy, spec, "forward")
        assert run is not None
        np.testing.assert_allclose(run(), expected, rtol=1e-4, atol=1e-4)
        assert contender.prepare(np.concatenate([x, x]), w, dy, spec, "forward") is None  # batch 2
        assert contender.prepare(x, w, dy, spec, "backward") is None  # no gradients
        dense = bench.Layer("t", 0, (3, 40, 36), (4, 3, 9, 7), (1, 1), ((4, 4), (3, 3)), (1, 1),
                            1)
        assert contender.prepare(x, rng.standard_normal(dense.weight).astype(np.float32), dy,
                                 bench.layer_spec(dense), "forward") is None


def test_contenders_that_cannot_run_a_layer_show_na(tmp_path):
    result = run_bench("--net", "tiny", "--batch", "1", "--repeats", "3", "--warmup", "1",
                       "--backend", "numba,numba:depthwise", "--compare", "scipy")
    assert result.returncode == 0, result.stderr
    row = next(line for line in result.stdout.splitlines() if line.startswith("  0 "))
    assert row.count("n/a") == 3, row


def test_ctrl_c_stops_the_workers_and_the_busy_process():
    import re
    import signal
    import time

    proc = subprocess.Popen(
        [sys.executable, "-m", "convflow", "bench", "--no-progress", "--net", "tiny", "--batch",
         "1,2,3,4,5,6,7,8", "--pass", "all", "--repeats", "50", "--warmup", "1", "--busy-core"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"})
    header = []
    assert proc.stdout is not None
    for line in proc.stdout:
        header.append(line)
        if line.startswith("tiny, batch 1, forward"):
            break
    time.sleep(0.5)  # measuring now
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert err == "convflow bench: interrupted; every worker and the busy process are stopped\n"
    text = "".join(header)
    pids = [int(p) for p in re.findall(r"\(pid (\d+)", text)]
    pids.append(int(re.search(r"busy core: .*, pid (\d+)", text).group(1)))
    assert len(pids) == 2
    for pid in pids:
        assert not pathlib.Path(f"/proc/{pid}").exists() or _zombie(pid), pid


def test_the_bench_process_only_orchestrates():
    """It loads neither a convflow backend nor torch: each contender's worker does."""
    compare = ", '--compare', 'torch'" if _has("torch") else ""
    code = ("import sys\n"
            "from convflow.cli import main\n"
            "status = main(['bench', '--net', 'tiny', '--batch', '1', '--repeats', '1', '--warmup', "
            f"'1', '--no-progress'{compare}])\n"
            "loaded = [m for m in sys.modules if m.split('.')[0] in ('numba', 'torch', 'llvmlite')\n"
            "          or m.startswith('convflow.backends.numba')]\n"
            "print('loaded:', sorted(loaded))\n"
            "sys.exit(status)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "loaded: []"
    assert "tiny, batch 1, forward" in result.stdout


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def _timed_runner(monkeypatch, durations):
    """A runner whose calls take *durations* (then the last one), on a fake clock."""
    clock = {"now": 0.0, "calls": 0}
    monkeypatch.setattr(worker.time, "perf_counter", lambda: clock["now"])

    def run():
        clock["now"] += durations[min(clock["calls"], len(durations) - 1)]
        clock["calls"] += 1

    return run, clock


def test_warm_up_goes_on_until_calls_are_steady(monkeypatch):
    """A new layer's first calls fault in fresh memory (24, 8, 5 ms, then 1.4): warm-up
    does not stop at the calls asked for while the last two disagree."""
    run, clock = _timed_runner(monkeypatch, [0.5, 0.024, 0.008, 0.005, 0.0014, 0.0014])
    assert worker.warm_up(run, 2) == pytest.approx(0.0014)
    assert clock["calls"] == 6   # 500, 24, 8, 5, 1.4 ms: no two in a row within 25%; 1.4 again


def test_warm_up_makes_the_calls_asked_for_when_already_steady(monkeypatch):
    run, clock = _timed_runner(monkeypatch, [0.010, 0.010, 0.010])
    worker.warm_up(run, 2)
    assert clock["calls"] == 2


@pytest.mark.parametrize("durations,calls", [
    ([0.001 * (1 + (i % 2) * 9) for i in range(100)], worker.WARMUP_MAX_CALLS),  # never steady
    ([3.0, 1.0], 1),                                                             # one slow call
])
def test_warm_up_is_bounded_in_calls_and_seconds(monkeypatch, durations, calls):
    run, clock = _timed_runner(monkeypatch, durations)
    worker.warm_up(run, 1)
    assert clock["calls"] == calls
