"""The benchmark timing helpers (bench/common.py): what they time, and in which order."""
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
