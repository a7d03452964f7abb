"""Issue #7's acceptance table (and #13's SAM2 comparison) from one `bench/run_gpu.sh` run, as markdown.

    python bench/summarize.py RESULTS_DIR [--json summary.json]

Every figure comes from the same run and device; a missing or failed bench shows as "not run".
Paste the table into docs/performance.md.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Callable, List, Optional

#: Encoder variants in order of preference for the fast path's throughput.
FAST_ENCODERS = ("sdpa_bf16_compile", "sdpa_bf16", "sdpa")


def read(folder: Path, name: str) -> Optional[dict]:
    path = folder / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def get_encoder_row(folder: Path) -> dict:
    report = read(folder, "encoder")
    if report is None:
        return {"check": "encoder throughput, batch 8", "target": ">= 8x official fp32", "measured": None}
    rows = {(row["variant"], row["batch"]): row for row in report["rows"] if "img_per_s" in row}
    official = rows.get(("official", 8))
    fast = next((rows[(name, 8)] for name in FAST_ENCODERS if (name, 8) in rows), None)
    ratio = fast["img_per_s"] / official["img_per_s"] if fast and official else None
    measured = (f"{fast['variant']} {fast['img_per_s']:.0f} img/s vs official {official['img_per_s']:.0f} img/s "
                f"= {ratio:.1f}x (cosine {fast['cosine_vs_official']:.5f})") if ratio else None
    return {"check": "encoder throughput, batch 8", "target": ">= 8x official fp32", "measured": measured,
            "met": None if ratio is None else ratio >= 8}


def get_click_row(folder: Path) -> dict:
    report = read(folder, "decoder")
    row = next((r for r in (report or {}).get("rows", []) if r["path"] == "ours_fast"), None)
    official = next((r for r in (report or {}).get("rows", []) if r["path"] == "official"), None)
    measured = (f"{row['click_ms']:.1f} ms (official SamPredictor {official['click_ms']:.1f} ms)"
                if row and official else None)
    return {"check": "click-to-mask, cached embedding", "target": "<= 10 ms", "measured": measured,
            "met": None if row is None else row["click_ms"] <= 10}


def get_propagation_row(folder: Path) -> dict:
    report = read(folder, "propagation")
    ours = (report or {}).get("propagation", {}).get("ours_fast")
    official = (report or {}).get("propagation", {}).get("official")
    measured = None
    if ours and official:
        measured = (f"{ours['seconds']:.2f} s for {ours['slices_written']} slices, {ours['encoder_calls']} encoder "
                    f"calls (official loop {official['seconds']:.2f} s)")
    return {"check": "propagation through the volume, embeddings included", "target": "<= 2 s for 200 slices",
            "measured": measured,
            "met": None if ours is None else ours["seconds"] * 200 / max(ours["slices_written"], 1) <= 2}


def get_train_row(folder: Path) -> dict:
    report = read(folder, "train_step")
    ours = (report or {}).get("results", {}).get("ours", {})
    naive = (report or {}).get("results", {}).get("naive_fp32_per_image", {})
    if "median_s" not in ours:
        return {"check": "MedicoSAM-preset training step", "target": "<= 150 ms and <= 40 GB", "measured": None}
    memory = ours.get("peak_memory_mib")
    naive_text = (f"; naive {1e3 * naive['median_s']:.0f} ms, {_mib(naive.get('peak_memory_mib'))}"
                  if "median_s" in naive else f"; naive: {naive.get('error', 'not run')}")
    measured = f"{1e3 * ours['median_s']:.0f} ms, {_mib(memory)} at batch {report['batch']}" + naive_text
    met = ours["median_s"] <= 0.150 and memory is not None and memory <= 40 * 1024
    return {"check": "MedicoSAM-preset training step", "target": "<= 150 ms and <= 40 GB", "measured": measured,
            "met": met}


def get_sam2_row(folder: Path) -> dict:
    """Issue #13's comparison: no target, the ratio of the same run."""
    report = read(folder, "sam2_propagation")
    check = "SAM2 video engine vs SAM prompt propagation (#13), per slice and peak memory"
    if report is None:
        return {"check": check, "target": "measured", "measured": None}
    sam, sam2 = report["paths"]["sam_prompt_propagation"], report["paths"]["sam2_video"]
    ratios = report["sam2_vs_sam"]

    def describe(row: dict) -> str:
        return (f"{row['ms_per_slice']:.1f} ms/slice, peak {row['peak_memory_mib']:.0f} MiB "
                f"(+{row['memory_growth_mib']:.0f})")

    measured = (f"SAM2.1 {report['sam2_size']} {describe(sam2)} vs SAM {report['arch']} {describe(sam)} "
                f"= {ratios['ms_per_slice']:.2f}x time, {ratios['peak_memory_mib']:.2f}x peak "
                f"({sam2['slices_predicted']} / {sam['slices_predicted']} slices; {sam2['memory_kind']})")
    return {"check": check, "target": "measured", "measured": measured}


def _mib(value: Optional[float]) -> str:
    return "peak memory n/a (CPU)" if value is None else f"{value:.0f} MiB"


ROWS: List[Callable[[Path], dict]] = [get_encoder_row, get_click_row, get_propagation_row, get_train_row,
                                      get_sam2_row]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path, help="the $OUT folder of bench/run_gpu.sh")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args()
    reports = [read(args.results, name) for name in ("encoder", "decoder", "propagation", "train_step",
                                                        "sam2_propagation")]
    first = next((report for report in reports if report is not None), None)
    if first is None:
        raise SystemExit(f"{args.results}: no bench JSON files; run bench/run_gpu.sh with OUT={args.results}")
    rows = [get_row(args.results) for get_row in ROWS]
    print(f"Device: {first['device']}, torch {first['torch']}, {first['date']} (one run)\n")
    print("| check | target | measured | met |\n|---|---|---|---|")
    for row in rows:
        met = {None: "-", True: "yes", False: "**no**"}[row.get("met")]
        print(f"| {row['check']} | {row['target']} | {row['measured'] or 'not run'} | {met} |")
    if args.json:
        args.json.write_text(json.dumps({"device": first["device"], "date": first["date"], "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
