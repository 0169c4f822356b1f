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


def kernels_section(results):
    lines = []
    for path, data in results:
        k = data.get("kernels")
        if not k:
            continue
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


SECTIONS = {"kernels": kernels_section}


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
        if not pattern.search(text):
            sys.exit(f"README.md has no <!-- bench:{name}:begin --> ... end --> section")
        text = pattern.sub(lambda m: m.group(1) + body + m.group(2), text)
    with open(readme, "w") as f:
        f.write(text)
    print("README.md updated")


if __name__ == "__main__":
    main(sys.argv[1:])
