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


def load_results():
    out = []
    for path in sorted(glob.glob(os.path.join(ROOT, "bench", "results", "*.json"))):
        with open(path) as f:
            out.append((os.path.relpath(path, ROOT), json.load(f)))
    return out


def sections(results, name):
    """(path, whole file, its section `name`) for every results file that has that section."""
    return [(path, data, data[name]) for path, data in results if data.get(name)]


def kernels_section(results):
    lines = []
    for path, data, k in sections(results, "kernels"):
        torch = k.get("torch") or "not installed"
        lines += [f"**{data['backend']}: {data['device']}**, {k['date'][:10]}, "
                  f"PyTorch {torch}, median of {k['repeats']} (`{path}`)", "",
                  "| op | elements | ms | GB/s | of copy | x NumPy reference | x PyTorch eager |",
                  "| --- | --- | --- | --- | --- | --- | --- |"]
        for r in sorted(k["rows"], key=lambda r: (-r["n"], r["op"])):
            ref = f"{r['speedup_vs_reference']:.2f}" if "speedup_vs_reference" in r else "-"
            tor = f"{r['speedup_vs_torch']:.2f}" if "speedup_vs_torch" in r else "not installed"
            lines.append(f"| {r['op']} | {r['n']:,} | {r['ms']:.3g} | {r['GBps']:.1f} | "
                         f"{r['frac_copy']:.0%} | {ref} | {tor} |")
        copy = ", ".join(f"{int(n):,} elements: {g:.1f} GB/s" for n, g in k["copy_GBps"].items())
        lines += ["", f"Copy bandwidth: {copy}."]
        if k.get("launch_overhead_us") is not None:
            lines.append(f"Launch overhead: {k['launch_overhead_us']:.1f} µs per kernel launch on CuPy arrays.")
        lines.append("")
    return "\n".join(lines) if lines else "No kernel results yet.\n"


def _peer(row, ms_key, ratio_key, error_key=None):
    if ms_key in row:
        return f"{row[ms_key]:.3g} ({row[ratio_key]:.2f}x)"
    return "failed" if error_key and error_key in row else "not installed"


def train_section(results):
    lines = []
    for path, data, t in sections(results, "train"):
        lines += [f"**{data['backend']}: {data['device']}**, {t['date'][:10]}, {t['model']}, "
                  f"PyTorch {t.get('torch') or 'not installed'}, median of {t['repeats']} (`{path}`)", "",
                  "| batch | tinydae ms/step | examples/s | GEMM floor ms (tinydae / floor) | "
                  "PyTorch eager ms (tinydae / eager) | torch.compile ms (tinydae / compiled) |",
                  "| --- | --- | --- | --- | --- | --- |"]
        for r in t["rows"]:
            lines.append(f"| {r['batch']} | {r['ms']:.3g} | {r['examples_per_s']:,.0f} | "
                         f"{r['floor_ms']:.3g} ({r['x_floor']:.2f}x) | "
                         f"{_peer(r, 'torch_eager_ms', 'x_torch_eager')} | "
                         f"{_peer(r, 'torch_compile_ms', 'x_torch_compile', 'torch_compile_error')} |")
        lines.append("")
    return "\n".join(lines) if lines else "No training-step results yet.\n"


def chain_section(results):
    lines = []
    for path, data, c in sections(results, "chain"):
        lines += [f"**{data['backend']}: {data['device']}**, {c['date'][:10]}, {c['model']}, "
                  f"PyTorch {c.get('torch') or 'not installed'} (`{path}`)", "",
                  "| chains | steps | chain-steps/s | tinydae / GEMM floor | PyTorch chain-steps/s | "
                  "tinydae time / PyTorch time | host syncs per step |",
                  "| --- | --- | --- | --- | --- | --- | --- |"]
        for r in c["rows"]:
            peer = (f"{r['torch_chain_steps_per_s']:,.0f} | {r['x_torch']:.2f}x" if "torch_s" in r
                    else "not installed | -")
            lines.append(f"| {r['chains']:,} | {r['steps']} | {r['chain_steps_per_s']:,.0f} | "
                         f"{r['x_floor']:.2f}x | {peer} | {r['host_syncs_per_step']:.0f} |")
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
