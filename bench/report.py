"""Markdown tables for the README, generated from bench/results/*.json.

    python bench/report.py            # print the tables
    python bench/report.py --write    # replace the marked sections of README.md
A section sits between <!-- bench:NAME:begin --> and <!-- bench:NAME:end --> in README.md.
"""
import glob
import json
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench.common import strongest_peer  # noqa: E402


def load_results():
    out = []
    for path in sorted(glob.glob(os.path.join(ROOT, "bench", "results", "*.json"))):
        with open(path) as f:
            out.append((os.path.relpath(path, ROOT), json.load(f)))
    return out


def sections(results, name):
    """(path, whole file, its section `name`) for every results file that has that section."""
    return [(path, data, data[name]) for path, data in results if data.get(name)]


def _values(sec, key, ident, field):
    """`field` of the row whose key(row) == ident in each kept run of the section (newest
    last; just the section's own rows for results saved before runs were kept)."""
    out = []
    for run in sec.get("runs") or [dict(rows=sec["rows"])]:
        out += [r[field] for r in run["rows"] if key(r) == ident and field in r]
    return out


def _spread(sec, key, row, field, fmt):
    """'median (min–max)' over the kept runs, or the one figure when there is one run."""
    v = _values(sec, key, key(row), field) or [row[field]]
    if len(v) == 1:
        return fmt(v[0])
    return f"{fmt(_median(v))} ({fmt(min(v))}–{fmt(max(v))})"


def _runs_note(sec):
    runs = sec.get("runs") or []
    if len(runs) < 2:
        return "one run"
    dates = sorted(r["date"][:10] for r in runs)
    when = dates[0] if dates[0] == dates[-1] else f"{dates[0]} to {dates[-1]}"
    return f"median (range) over {len(runs)} runs, {when}"


def kernels_section(results):
    lines = []
    for path, data, k in sections(results, "kernels"):
        torch = k.get("torch") or "not installed"
        lines += [f"**{data['backend']}: {data['device']}**, {k['date'][:10]}, "
                  f"PyTorch {torch}; each run the median of {k['repeats']}; {_runs_note(k)} (`{path}`)", "",
                  "| op | elements | ms | GB/s | of copy | x NumPy reference | x PyTorch eager |",
                  "| --- | --- | --- | --- | --- | --- | --- |"]
        key = lambda r: (r["op"], r["n"])  # noqa: E731
        for r in sorted(k["rows"], key=lambda r: (-r["n"], r["op"])):
            x2 = lambda v: f"{v:.2f}"  # noqa: E731
            ref = _spread(k, key, r, "speedup_vs_reference", x2) if "speedup_vs_reference" in r else "-"
            tor = _spread(k, key, r, "speedup_vs_torch", x2) if "speedup_vs_torch" in r else "not installed"
            lines.append(f"| {r['op']} | {r['n']:,} | {_spread(k, key, r, 'ms', lambda v: f'{v:.3g}')} | "
                         f"{_spread(k, key, r, 'GBps', lambda v: f'{v:.1f}')} | "
                         f"{r['frac_copy']:.0%} | {ref} | {tor} |")
        copy = ", ".join(f"{int(n):,} elements: {g:.1f} GB/s" for n, g in k["copy_GBps"].items())
        lines += ["", f"Copy bandwidth: {copy}."]
        if k.get("launch_overhead_us") is not None:
            lines.append(f"Launch overhead: {k['launch_overhead_us']:.1f} µs per kernel launch on CuPy arrays.")
        lines.append("")
    return "\n".join(lines) if lines else "No kernel results yet.\n"


def _median(v):
    v = sorted(v)
    return v[len(v) // 2] if len(v) % 2 else (v[len(v) // 2 - 1] + v[len(v) // 2]) / 2


def _ms_and_ratio(sec, key, row, ms_key, ratio_key, fmt=lambda v: f"{v:.3g}"):
    """'ms (ratio x)' with medians over the kept runs, and the ratio's range when there are several."""
    ms = _median(_values(sec, key, key(row), ms_key) or [row[ms_key]])
    ratios = _values(sec, key, key(row), ratio_key) or [row[ratio_key]]
    spread = f", {min(ratios):.2f}–{max(ratios):.2f}" if len(ratios) > 1 else ""
    return f"{fmt(ms)} ({_median(ratios):.2f}x{spread})"


# Sections saved before the peers were named (issue 12) had these; their strongest peer is
# worked out here from the row's own figures.
LEGACY_PEERS = {"train": {"torch_eager": "eager for-loop Adam", "torch_compile": "torch.compile of the model only"},
                "chain": {"torch": "PyTorch eager"}}


def _with_peers(sec, section):
    """-> (the section, its peers {id: label}); an old section's rows get the strongest-peer
    fields that newer benchmarks store (strongest, strongest_<unit>, x_strongest)."""
    if sec.get("peers"):
        return sec, sec["peers"]
    peers = LEGACY_PEERS[section]
    unit, own = ("ms", "ms") if section == "train" else ("s", "seconds")

    def fill(row):
        best, time = strongest_peer(row, peers, unit)
        if best is None:
            return row
        row = dict(row, strongest=best, x_strongest=row[own] / time, **{f"strongest_{unit}": time})
        if section == "chain":
            row["strongest_chain_steps_per_s"] = row["chains"] * row["steps"] / time
        return row
    runs = [dict(run, rows=[fill(r) for r in run["rows"]]) for run in sec.get("runs") or []]
    return dict(sec, rows=[fill(r) for r in sec["rows"]], runs=runs), peers


def _strongest(sec, key, row, peers, value_key, fmt):
    """'label: value (tinydae / it)' for the strongest peer; every label that was strongest in a
    kept run, the newest first."""
    if "strongest" not in row:
        return "none timed"
    names = []
    for p in reversed(_values(sec, key, key(row), "strongest")):
        if peers.get(p, p) not in names:
            names.append(peers.get(p, p))
    return f"{' / '.join(names)}: {_ms_and_ratio(sec, key, row, value_key, 'x_strongest', fmt)}"


def _others(sec, key, row, peers):
    """The other peers' tinydae / peer ratios, medians over the kept runs, compactly."""
    parts = []
    for p, label in peers.items():
        if p == row.get("strongest"):
            continue
        if f"x_{p}" in row:
            parts.append(f"{label} {_median(_values(sec, key, key(row), f'x_{p}')):.2f}")
        elif f"{p}_error" in row:
            parts.append(f"{label} failed")
    return ", ".join(parts) or "-"


def _versions(sec):
    jax = "" if "peers" not in sec else f", JAX {sec.get('jax') or 'not installed'}"
    return f"PyTorch {sec.get('torch') or 'not installed'}{jax}"


def train_section(results):
    lines = []
    for path, data, t in sections(results, "train"):
        t, peers = _with_peers(t, "train")
        lines += [f"**{data['backend']}: {data['device']}**, {t['date'][:10]}, {t['model']}, "
                  f"{_versions(t)}; each run the median of {t['repeats']}; {_runs_note(t)} (`{path}`)", "",
                  "| batch | tinydae ms/step | examples/s | lower bound ms (tinydae / bound) | "
                  "strongest peer: ms (tinydae / it) | other peers, tinydae / peer |",
                  "| --- | --- | --- | --- | --- | --- |"]
        key = lambda r: r["batch"]  # noqa: E731
        for r in t["rows"]:
            bound = (_ms_and_ratio(t, key, r, "bound_ms", "x_bound") if "bound_ms" in r
                     else "GEMM floor only: " + _ms_and_ratio(t, key, r, "floor_ms", "x_floor"))
            lines.append(f"| {r['batch']} | {_spread(t, key, r, 'ms', lambda v: f'{v:.3g}')} | "
                         f"{_spread(t, key, r, 'examples_per_s', lambda v: f'{v:,.0f}')} | {bound} | "
                         f"{_strongest(t, key, r, peers, 'strongest_ms', lambda v: f'{v:.3g}')} | "
                         f"{_others(t, key, r, peers)} |")
        if any("bound_ms" in r for r in t["rows"]):
            bw = _median([r["bandwidth_GBps"] for r in t["rows"] if "bandwidth_GBps" in r])
            floors = ", ".join(f"{r['batch']}: {_median(_values(t, key, r['batch'], 'x_floor')):.2f}x"
                               for r in t["rows"])
            lines += ["", f"Lower bound = GEMM floor + Adam's 7 × 4 bytes × {t['n_params']:,} parameters at the "
                          f"fastest streaming bandwidth measured in the run (median {bw:.1f} GB/s). "
                          f"tinydae / GEMM floor alone: {floors}."]
        lines.append("")
    return "\n".join(lines) if lines else "No training-step results yet.\n"


def chain_section(results):
    lines = []
    for path, data, c in sections(results, "chain"):
        c, peers = _with_peers(c, "chain")
        lines += [f"**{data['backend']}: {data['device']}**, {c['date'][:10]}, {c['model']}, "
                  f"{_versions(c)}; {_runs_note(c)} (`{path}`)", "",
                  "| chains | steps | chain-steps/s | tinydae / lower bound (GEMM floor) | "
                  "strongest peer: chain-steps/s (tinydae time / its) | other peers, tinydae time / peer's | "
                  "host syncs per step |",
                  "| --- | --- | --- | --- | --- | --- | --- |"]
        key = lambda r: (r["chains"], r["steps"])  # noqa: E731
        for r in c["rows"]:
            lines.append(f"| {r['chains']:,} | {r['steps']} | "
                         f"{_spread(c, key, r, 'chain_steps_per_s', lambda v: f'{v:,.0f}')} | "
                         f"{_spread(c, key, r, 'x_floor', lambda v: f'{v:.2f}x')} | "
                         f"{_strongest(c, key, r, peers, 'strongest_chain_steps_per_s', lambda v: f'{v:,.0f}')} | "
                         f"{_others(c, key, r, peers)} | {r['host_syncs_per_step']:.0f} |")
        lines.append("")
    return "\n".join(lines) if lines else "No chain results yet.\n"


def launch_section(results):
    lines = []
    for path, data, r in sections(results, "launch"):
        lines += [f"**{data['backend']}: {data['device']}**, {r['date'][:10]}, float32, {r['elements']:,} elements; "
                  f"µs per launch, median [min–max] of {r['repeats']} blocks of {r['launches']} launches (`{path}`)",
                  "", f"| op | contender | host µs per launch | x {r['floor']} | with a sync per launch, µs | "
                      "result vs CPU twin |",
                  "| --- | --- | --- | --- | --- | --- |"]
        for row in r["rows"]:
            if "error" in row:
                lines.append(f"| {row['op']} | {row['contender']} | failed: {row['error']} | - | - | - |")
                continue
            x = f"{row['x_floor']:.2f}" if "x_floor" in row else "-"
            lines.append(f"| {row['op']} | {row['contender']} | {row['host_us']:.2f} "
                         f"[{row['host_us_min']:.2f}–{row['host_us_max']:.2f}] | {x} | {row['sync_us']:.2f} "
                         f"[{row['sync_us_min']:.2f}–{row['sync_us_max']:.2f}] | "
                         f"{'agrees' if row['agrees'] else 'MISMATCH'} |")
        lines += [""] + [f"- {name}: {what}" for name, what in r["contenders"].items()] + [""]
    return "\n".join(lines) if lines else "No launch-overhead results yet (they need a GPU).\n"


SECTIONS = {"kernels": kernels_section, "train": train_section, "chain": chain_section, "launch": launch_section}
OPTIONAL = {"launch"}  # --write skips these, with a note, while README.md has no markers for them


def main(argv):
    results = load_results()
    rendered = {name: fn(results) for name, fn in SECTIONS.items()}
    if "--write" not in argv:
        for name, text in rendered.items():
            print(f"## {name}\n\n{text}")
        return
    readme = os.path.join(ROOT, "README.md")
    with open(readme) as f:
        text = f.read()
    for name, body in rendered.items():
        pattern = re.compile(rf"(<!-- bench:{name}:begin -->\n).*?(<!-- bench:{name}:end -->)", re.S)
        if not pattern.search(text) and name in OPTIONAL:
            print(f"README.md has no <!-- bench:{name}:begin --> ... end --> section; {name} left out")
            continue
        if not pattern.search(text):
            sys.exit(f"README.md has no <!-- bench:{name}:begin --> ... end --> section")
        text = pattern.sub(lambda m: m.group(1) + body + m.group(2), text)
    with open(readme, "w") as f:
        f.write(text)
    print("README.md updated")


if __name__ == "__main__":
    main(sys.argv[1:])
