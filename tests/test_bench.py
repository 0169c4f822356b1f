"""The benchmark helpers (bench/common.py), the peers of bench_train / bench_chain and the
README tables (bench/report.py): what they time, in which order, and what they compute."""
import shutil

import numpy as np
import pytest

from bench.common import interleaved_medians


def test_interleaved_medians_times_every_contender_in_rounds():
    calls = []

    def contender(name):
        return lambda: calls.append(name)

    def fake_timer(seconds):
        it = iter(seconds)

        def time_one(fn):
            fn()
            calls.append("timed")
            return next(it)
        return time_one

    entries = {"a": (contender("a"), fake_timer([5.0, 1.0, 3.0, 9.0, 2.0])),
               "b": (contender("b"), fake_timer([7.0, 7.0, 6.0, 8.0, 100.0]))}
    t = interleaved_medians(entries, repeats=5, warmup=1, rounds=3, pause_s=0, settle=1)
    assert t == {"a": 3.0, "b": 7.0}  # the medians of each contender's own five timings
    # warm-up once each, then rounds of 2, 2 and 1 timed calls, each block after 1 settling call
    block_a2, block_b2 = ["a", "a", "timed", "a", "timed"], ["b", "b", "timed", "b", "timed"]
    block_a1, block_b1 = ["a", "a", "timed"], ["b", "b", "timed"]
    assert calls == ["a", "b"] + block_a2 + block_b2 + block_a2 + block_b2 + block_a1 + block_b1


def test_interleaved_times_keeps_every_timing_and_medians_are_theirs():
    from bench.common import interleaved_times

    def entry(seconds):
        it = iter(seconds)
        return (lambda: None, lambda fn: (fn(), next(it))[1])

    spec = {"a": [5.0, 1.0, 3.0, 9.0, 2.0], "b": [7.0, 7.0, 6.0, 8.0, 100.0]}
    times = interleaved_times({k: entry(v) for k, v in spec.items()}, repeats=5, warmup=0, rounds=2, pause_s=0,
                              settle=0)
    assert times == spec  # every timed call, in the order it was timed (ranges come from these)
    medians = interleaved_medians({k: entry(v) for k, v in spec.items()}, repeats=5, warmup=0, rounds=2,
                                  pause_s=0, settle=0)
    assert medians == {"a": 3.0, "b": 7.0}


def test_bench_writes_results_only_when_asked(tmp_path, monkeypatch):
    """Without --save the committed bench/results/ stay untouched; --out FILE gets valid JSON;
    an --out that cannot be written is refused before any timing."""
    import glob
    import hashlib
    import json
    import os

    from click.testing import CliRunner

    from tinydae.cli import cli

    results = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench", "results")

    def snapshot():
        return {p: hashlib.sha256(open(p, "rb").read()).hexdigest() for p in glob.glob(f"{results}/*.json")}

    before = snapshot()
    out = tmp_path / "k.json"
    r = CliRunner().invoke(cli, ["bench", "kernels", "--backend", "cpu", "--sizes", "4K", "--repeats", "2",
                                 "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert snapshot() == before and f"saved {out}" in r.output
    assert json.loads(out.read_text(), parse_constant=lambda c: pytest.fail(c))["saved"] is None
    (tmp_path / "f").write_text("x")
    r = CliRunner().invoke(cli, ["bench", "train", "--backend", "cpu", "--batches", "2", "--repeats", "1",
                                 "--out", str(tmp_path / "f" / "t.json")])
    assert r.exit_code == 2 and "which is a file" in r.output and "ms" not in r.output


def test_saved_runs_are_kept_and_the_report_gives_median_and_range(tmp_path):
    """--save keeps the last RUNS_KEPT runs of a section; the README table shows the median
    and the range over them (issue 10: figures as ranges over three runs)."""
    from types import SimpleNamespace

    from bench import common, report

    backend = SimpleNamespace(name="cpu", device="test device")
    path = str(tmp_path / "r.json")
    for i, ms in enumerate([4.0, 9.0, 5.0, 6.0]):  # four saves: the first falls out
        rows = [dict(op="adam update", n=1024, ms=ms, GBps=100 / ms, frac_copy=0.5,
                     speedup_vs_reference=10 / ms)]
        common.save_section(backend, "kernels", dict(rows=rows, copy_GBps={"1024": 1.0}, repeats=5,
                                                     torch=None, launch_overhead_us=None), path=path)
    import json
    data = json.load(open(path))
    assert [r["rows"][0]["ms"] for r in data["kernels"]["runs"]] == [9.0, 5.0, 6.0]
    table = report.kernels_section([("r.json", data)])
    assert "median (range) over 3 runs" in table
    assert "| 6 (5–9) |" in table  # ms: median 6 of 9, 5, 6
    assert "1.67 (1.11–2.00)" in table  # x reference: 10/6, 10/9, 10/5


# --- issue 12: the strongest peers, the lower bound, and the tables built from them ---------

def test_strongest_peer_is_the_fastest_peer_that_was_timed():
    from bench.common import strongest_peer

    peers = {"slow": "a slow peer", "fast": "a fast peer", "broken": "a peer that failed", "absent": "not run"}
    row = dict(ms=10.0, slow_ms=12.0, fast_ms=9.0, broken_error="RuntimeError: no compiler")
    assert strongest_peer(row, peers) == ("fast", 9.0)
    assert strongest_peer(dict(torch_s=2.0, jax_jit_s=3.0), ["torch", "jax_jit"], unit="s") == ("torch", 2.0)
    assert strongest_peer(dict(ms=1.0), peers) == (None, None)  # no peer installed


def test_lower_bound_is_the_gemm_floor_plus_adams_bytes_at_the_measured_bandwidth():
    from bench.common import ADAM_BUFFERS_MOVED, lower_bound_ms

    assert ADAM_BUFFERS_MOVED == 7  # reads params, grads, m, v; writes params, m, v
    # 3,571,784 float32 parameters: 7 * 4 * P = 100.0 MB, at 50 GB/s 2.0 ms, plus a 7.5 ms floor
    assert lower_bound_ms(7.5, 3_571_784, 50.0) == pytest.approx(7.5 + 100.009952 / 50)
    assert lower_bound_ms(7.5, 3_571_784, 50.0, itemsize=8) == pytest.approx(7.5 + 2 * 100.009952 / 50)
    assert lower_bound_ms(0.0, 1_000_000, 28.0) == pytest.approx(1.0)


def test_bandwidth_streams_count_read_and_write_bytes():
    from tinydae import get_backend

    from bench.common import bandwidth_entries

    entries, nbytes = bandwidth_entries(get_backend("cpu"), 1000)
    assert nbytes == {"np.copyto": 8000, "copy all cores": 8000, "dst += src all cores": 12000}
    for fn, timer in entries.values():
        assert timer(fn) >= 0


def _small_model():
    from tinydae import DAE, get_backend

    return DAE(20, hidden=(16, 12), activation="relu", loss="bce", seed=3, backend=get_backend("cpu"))


def _tinydae_losses(steps, sigma=0.0):
    """tinydae's first `steps` per-example losses from _small_model on fixed data in [0, 1]."""
    from tinydae import Adam

    from bench.bench_train import LR, tinydae_step

    model = _small_model()
    x = np.random.default_rng(0).random((6, 20), dtype=np.float32)
    step = tinydae_step(model, Adam(model, lr=LR), x, [0], sigma=sigma)
    return x, [step() for _ in range(steps)]


def _torch():
    return pytest.importorskip("torch", reason="PyTorch is not installed: its peers are not benchmarked")


def test_torch_eager_peers_compute_tinydaes_loss_without_corruption():
    """sigma = 0: same weights, same input, so the same loss, before and after one Adam update
    (the second loss checks the optimizer too), for every eager Adam variant."""
    torch = _torch()
    from bench.bench_train import torch_peers

    x, expected = _tinydae_losses(2)
    # rel 2e-6: float32 rounding moves these losses by ~1e-7; Adam with beta1 = 0.8 instead of
    # 0.9 moves the third loss by 7e-6 (the first update does not depend on beta1)
    peers = torch_peers(torch, _small_model(), torch.as_tensor(x), "cpu", sigma=0.0, compile_peer=False)
    assert set(peers) == {"torch_eager", "torch_foreach", "torch_fused"}
    for name, build in peers.items():
        step = build()
        assert [step(), step()] == pytest.approx(expected, rel=2e-6), name


@pytest.mark.slow
def test_torch_compiled_whole_step_computes_tinydaes_loss_without_corruption():
    torch = _torch()
    from bench.bench_train import torch_peers

    if not (shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")):
        pytest.skip("torch.compile needs a C++ compiler on the CPU (the benchmark records its error instead)")
    x, expected = _tinydae_losses(2)
    step = torch_peers(torch, _small_model(), torch.as_tensor(x), "cpu", sigma=0.0)["torch_compile_step"]()
    assert [step(), step()] == pytest.approx(expected, rel=2e-6)


def test_jax_whole_step_computes_tinydaes_loss_without_corruption():
    jax = pytest.importorskip("jax", reason="JAX is not installed: its peer is not benchmarked")
    from bench.bench_train import jax_step

    x, expected = _tinydae_losses(3)
    step = jax_step(jax, _small_model(), x, sigma=0.0)
    assert [step(), step(), step()] == pytest.approx(expected, rel=2e-6)


def test_jax_whole_step_corrupts_with_the_same_distribution():
    """sigma > 0: the peer's own RNG, so only the loss level must agree, not the draws."""
    jax = pytest.importorskip("jax", reason="JAX is not installed: its peer is not benchmarked")
    from bench.bench_train import SIGMA, jax_step

    x, ours = _tinydae_losses(1, sigma=SIGMA)
    clean = _tinydae_losses(1)[1]
    theirs = jax_step(jax, _small_model(), x, sigma=SIGMA)()
    assert theirs != pytest.approx(clean[0], rel=1e-3)  # the noise is there
    assert theirs == pytest.approx(ours[0], rel=0.1)     # and of the same size


@pytest.mark.parametrize("peer", ["torch", "jax"])
def test_chain_peers_compute_tinydaes_chain_without_corruption(peer):
    from tinydae.sampling import chain

    from bench.bench_chain import jax_chain, torch_chain
    from bench.bench_train import torch_model

    lib = pytest.importorskip(peer, reason=f"{peer} is not installed: its chain peer is not benchmarked")
    model = _small_model()
    x0 = np.random.default_rng(1).random((5, 20), dtype=np.float32)
    expected = chain(model, x0, 3, corruption="none", keep_chains=0).samples
    run = (torch_chain(lib, torch_model(lib, model, "cpu"), lib.as_tensor(x0), 3, sigma=0.0) if peer == "torch"
           else jax_chain(lib, model, x0, 3, sigma=0.0))
    np.testing.assert_allclose(np.asarray(run()), expected, rtol=1e-5, atol=1e-6)


def _train_row(batch, ms, peers_ms, bound_ms=None):
    row = dict(batch=batch, ms=ms, examples_per_s=batch / ms * 1e3, floor_ms=0.5 * ms, x_floor=2.0)
    for name, t in peers_ms.items():
        row.update({f"{name}_ms": t, f"x_{name}": ms / t})
    if bound_ms is not None:
        row.update(bound_ms=bound_ms, x_bound=ms / bound_ms, bandwidth_GBps=50.0)
        from bench.common import strongest_peer

        best, t = strongest_peer(row, peers_ms)
        row.update(strongest=best, strongest_ms=t, x_strongest=ms / t)
    return row


def test_train_table_names_the_strongest_peer_and_the_lower_bound():
    from bench import report

    peers = {"torch_eager": "eager for-loop Adam", "torch_fused": "eager fused Adam", "jax_jit": "JAX jit whole step"}
    runs = [[_train_row(64, ms, dict(torch_eager=14.0, torch_fused=f, jax_jit=j), bound_ms=10.0),
             _train_row(1024, 80.0, dict(torch_eager=90.0, torch_fused=85.0, jax_jit=70.0), bound_ms=64.0)]
            for ms, f, j in [(12.0, 11.0, 12.5), (13.0, 13.5, 12.5), (12.5, 12.0, 12.6)]]
    for rows in runs:
        rows[1]["torch_compile_step_error"] = "BackendCompilerFailed: no C++ compiler"
    section = dict(rows=runs[-1], date="2026-11-26T00:00:00+00:00", model="m", repeats=20, torch="2.13.0",
                   jax="0.10.2", peers=dict(peers, torch_compile_step="compiled whole step"), n_params=3_571_784,
                   runs=[dict(date=f"2026-11-2{6 + i}T00:00:00+00:00", rows=rows) for i, rows in enumerate(runs)])
    table = report.train_section([("r.json", dict(backend="cpu", device="test cpu", train=section))])
    assert "PyTorch 2.13.0, JAX 0.10.2" in table and "median (range) over 3 runs" in table
    # batch 64: tinydae 12.5 (12–13) ms; strongest per run: fused 11, JAX 12.5, fused 12 -> newest first
    assert "| 64 | 12.5 (12–13) |" in table
    assert "| 10 (1.25x, 1.20–1.30) |" in table                              # the lower bound
    assert "eager fused Adam / JAX jit whole step: 12 (1.04x, 1.04–1.09) |" in table
    assert "eager for-loop Adam 0.89, JAX jit whole step 0.99 |" in table    # the others, medians
    assert "JAX jit whole step: 70 (1.14x, 1.14–1.14)" in table              # batch 1024: one peer each run
    assert "compiled whole step failed" in table
    assert "Adam's 7 × 4 bytes × 3,571,784 parameters" in table and "50.0 GB/s" in table


def test_train_and_chain_tables_still_render_results_saved_before_issue_12():
    """Old files have no peers, bound or strongest fields: their peers were eager (PyTorch's
    default, for-loop, Adam) and torch.compile of the model, and only the GEMM floor."""
    from bench import report

    old_train = dict(rows=[dict(batch=64, ms=12.0, examples_per_s=5333.0, floor_ms=6.0, x_floor=2.0,
                                torch_eager_ms=13.0, x_torch_eager=12 / 13, torch_compile_ms=15.0,
                                x_torch_compile=0.8)],
                     date="2026-11-24T00:00:00+00:00", model="m", repeats=10, torch="2.13.0")
    old_chain = dict(rows=[dict(chains=64, steps=100, seconds=0.3, chain_steps_per_s=21333.0, floor_s=0.2,
                                x_floor=1.5, host_syncs_per_step=0.0, torch_s=0.25, x_torch=1.2,
                                torch_chain_steps_per_s=25600.0)],
                     date="2026-11-24T00:00:00+00:00", model="m", repeats=5, torch="2.13.0")
    results = [("old.json", dict(backend="cpu", device="old cpu", train=old_train, chain=old_chain))]
    train = report.train_section(results)
    assert "| 64 | 12 | 5,333 | GEMM floor only: 6 (2.00x) | eager for-loop Adam: 13 (0.92x) | " \
           "torch.compile of the model only 0.80 |" in train
    assert "JAX" not in train  # not measured then, rather than "not installed"
    chain = report.chain_section(results)
    assert "| 64 | 100 | 21,333 | 1.50x | PyTorch eager: 25,600 (1.20x) | - | 0 |" in chain


def test_chain_table_names_the_strongest_peer():
    from bench import report

    row = dict(chains=64, steps=100, seconds=0.3, chain_steps_per_s=21333.0, floor_s=0.2, x_floor=1.5,
               host_syncs_per_step=0.0, torch_s=0.25, x_torch=1.2, torch_chain_steps_per_s=25600.0,
               jax_jit_s=0.2, x_jax_jit=1.5, jax_jit_chain_steps_per_s=32000.0,
               torch_compile_step_error="InvalidCxxCompiler: no working C++ compiler found",
               strongest="jax_jit", strongest_s=0.2, x_strongest=1.5, strongest_chain_steps_per_s=32000.0)
    section = dict(rows=[row], date="2026-11-26T00:00:00+00:00", model="m", repeats=5, torch="2.13.0", jax=None,
                   peers={"torch": "PyTorch eager", "torch_compile_step": "compiled step", "jax_jit": "JAX jit step"})
    table = report.chain_section([("r.json", dict(backend="cpu", device="test cpu", chain=section))])
    assert "JAX not installed" in table  # the section says so even though its row has JAX figures (fabricated)
    assert "| 1.50x | JAX jit step: 32,000 (1.50x) | PyTorch eager 1.20, compiled step failed | 0 |" in table


def test_the_conv_layer_benchmark_runs_and_reports_its_ratio():
    from bench import bench_conv

    lines = []
    result = bench_conv.run("cpu", batches=(2,), repeats=1, warmup=0, log=lines.append)
    row = result["rows"][0]
    assert row["batch"] == 2 and row["tinydae_ms"] > 0 and len(lines) == 1
    if result["torch"]:
        assert row["x_pytorch"] == row["tinydae_ms"] / row["pytorch_ms"]
    assert bench_conv.main(["--batches", "x"]) == 2
