"""Peak memory of a DPO run whose data holds one huge row, against the row's size.

Issue 14: one valid 50 MB row made `rlhf dpo` grow to 18.6 GB (about 0.4 GB per MB of row),
even with data.max_length=48, because the row was rendered and tokenised whole before being
truncated; `rlhf data check` on the same file ran for 19 minutes. Tokenisation now cuts each
text to what max_length tokens can come from first, so the run's peak should grow only by the
raw text itself (the row is read, and held, as a Python string) and not by tokens of it.

Each run is a fresh process (`_harness.run_in_child`): `rlhf dpo --preset tiny` for two steps
on 64 built-in preference pairs plus one pair whose prompt has the given size, then
`rlhf data check` on the same file. The table shows the peak RSS of each, and the growth per
MB of row over the run without one.

    .venv/bin/python benchmarks/bench_long_rows.py [--sizes 0 10 50]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from _harness import cpu_description, format_table, progress, run_in_child


def write_data(path: str, row_mb: float) -> None:
    from rlhf.data.readers import write_records
    from rlhf.data.records import PreferenceRecord
    from rlhf.sim.builtin import load_builtin

    records = list(load_builtin("builtin:arithmetic-preferences?n=64"))
    if row_mb:
        filler = "Once upon a time there was a cat who liked to count. "
        prompt = filler * int(row_mb * 1e6 / len(filler)) + "What is 2 + 2?\n"
        records.insert(0, PreferenceRecord(prompt, " 4", " 5"))
    write_records(path, records)


def dpo_run(data: str, out: str) -> dict[str, float]:
    """Two DPO steps of the tiny preset on ``data`` (run in a child)."""
    from rlhf.config import load_config, preset_path, read_yaml
    from rlhf.recipes.dpo import DPOConfig, run_dpo

    overrides = [
        f"data.train={data}", f"out={out}", "progress=false", "tensorboard=false",
        "train.max_steps=2", "data.max_length=48", "eval.kl_prompts=0",
    ]  # fmt: skip
    config = load_config(DPOConfig, None, overrides, base=read_yaml(preset_path("dpo", "tiny")))
    start = time.perf_counter()
    result = run_dpo(config)
    return {"steps": float(result.final_step), "seconds": time.perf_counter() - start}


def data_check(data: str) -> dict[str, float]:
    """`rlhf data check` on ``data``, its report rendered (run in a child)."""
    import io

    from rich.console import Console

    from rlhf.data.check import check_data

    start = time.perf_counter()
    report = check_data(data, None)
    report.render(Console(file=io.StringIO(), width=120))
    return {"errors": float(len(report.errors)), "seconds": time.perf_counter() - start}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=float, nargs="+", default=[0, 10, 50], help="row MB")
    args = parser.parse_args()
    print(cpu_description())
    rows, base = [], None
    with tempfile.TemporaryDirectory() as folder:
        for size in args.sizes:
            data = str(Path(folder) / f"pairs-{size:g}.jsonl")
            write_data(data, size)
            progress(f"{size:g} MB row: dpo")
            run = run_in_child(dpo_run, data=data, out=str(Path(folder) / f"run-{size:g}"))
            progress(f"{size:g} MB row: data check")
            check = run_in_child(data_check, data=data)
            peak = run["peak_rss_mb"]
            base = peak if base is None and size == 0 else base
            growth = (peak - base) / size if base is not None and size else float("nan")
            rows.append(
                [f"{size:g}", f"{peak:.0f}", f"{growth:.2f}", f"{run['seconds']:.1f}",
                 f"{check['peak_rss_mb']:.0f}", f"{check['seconds']:.1f}"]
            )  # fmt: skip
    print(
        format_table(
            ["row MB", "dpo peak MB", "MB per MB of row", "dpo s", "check peak MB", "check s"],
            rows,
        )
    )
    sys.stdout.flush()


if __name__ == "__main__":
    main()
