"""What an evaluation's results say: summary tables (CSV and markdown) and the paper's plots.

The measurements themselves live in the results CSV (`results.py`); everything here is derived
from its rows and can be rewritten at any time.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from .interactive_3d import SETTING_FIELDS
from .results import PathLike, Row

#: Colours of the paper's figures: point starts green, box starts yellow / orange.
START_COLORMAPS = {"point": "Greens", "box": "YlOrBr"}


# ---------------------------------------------------------------- tables


def get_summary(rows: Iterable[Mapping[str, object]], group_fields: Sequence[str],
                value_field: str = "dice") -> List[Row]:
    """Mean, standard deviation and count of `value_field` per group (NaN skipped), groups in first-seen order."""
    groups: Dict[Tuple[str, ...], List[float]] = {}
    for row in rows:
        groups.setdefault(tuple(str(row[f]) for f in group_fields), []).append(float(row[value_field]))
    summary = []
    for key, values in groups.items():
        array = np.array(values, dtype=float)
        array = array[~np.isnan(array)]
        mean, std = (float(array.mean()), float(array.std())) if array.size else (math.nan, math.nan)
        summary.append({**dict(zip(group_fields, key)), "mean": mean, "std": std, "n": int(array.size)})
    return summary


def write_table_csv(rows: Sequence[Mapping[str, object]], path: PathLike) -> Path:
    """Write rows (dicts with equal keys) as CSV."""
    path = Path(path)
    with open(path, "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=list(rows[0]) if rows else [], lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    return path


def get_markdown_table(header: Sequence[str], body: Sequence[Sequence[object]]) -> str:
    """A GitHub markdown table; floats with 3 decimals, NaN as "-"."""
    def cell(value: object) -> str:
        if isinstance(value, float):
            return "-" if math.isnan(value) else f"{value:.3f}"
        return str(value)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in body]
    return "\n".join(lines) + "\n"


def get_pivot(summary: Sequence[Mapping[str, object]], row_fields: Sequence[str], column_field: str,
              value: Callable[[Mapping[str, object]], object] = lambda s: s["mean"]
              ) -> Tuple[List[str], List[List[object]]]:
    """A summary as (header, rows): one row per `row_fields` value, one column per `column_field` value."""
    columns: List[str] = []
    table: Dict[Tuple[str, ...], Dict[str, object]] = {}
    for entry in summary:
        column = str(entry[column_field])
        if column not in columns:
            columns.append(column)
        table.setdefault(tuple(str(entry[f]) for f in row_fields), {})[column] = value(entry)
    header = [*row_fields, *columns]
    return header, [[*key, *(cells.get(c, "") for c in columns)] for key, cells in table.items()]


# ---------------------------------------------------------------- plots


def _get_pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, no display needed
    import matplotlib.pyplot as plt

    return plt


def _get_models(summary: Sequence[Mapping[str, object]]) -> List[str]:
    models: List[str] = []
    for entry in summary:
        if entry["model"] not in models:
            models.append(str(entry["model"]))
    return models


def get_dataset_mean(summary: Sequence[Mapping[str, object]], fields: Sequence[str]) -> Dict[Tuple[str, ...], float]:
    """Mean over datasets of the per-dataset means (the paper averages datasets, not objects)."""
    values: Dict[Tuple[str, ...], List[float]] = {}
    for entry in summary:
        values.setdefault(tuple(str(entry[f]) for f in fields), []).append(float(entry["mean"]))
    return {key: float(np.mean(v)) for key, v in values.items()}


def plot_interactive_2d(summary: Sequence[Mapping[str, object]], path: PathLike) -> Path:
    """Grouped bars like the paper's Fig. 3a: per model, one bar per iteration for point and box starts.

    Shades darken with the iteration (the start prompt lightest, the last correction darkest);
    values are averaged over datasets.
    """
    plt = _get_pyplot()
    means = get_dataset_mean(summary, ("model", "start", "iteration"))
    models = _get_models(summary)
    starts = [s for s in START_COLORMAPS if any(key[1] == s for key in means)]
    n_iterations = 1 + max(int(key[2]) for key in means)
    width = 0.8 / (len(starts) * n_iterations)
    figure, axes = plt.subplots(figsize=(max(6.0, 2.5 * len(models)), 4.0))
    for s, start in enumerate(starts):
        colors = plt.get_cmap(START_COLORMAPS[start])(np.linspace(0.3, 0.95, n_iterations))
        for it in range(n_iterations):
            offset = (s * n_iterations + it) * width - 0.4 + width / 2
            heights = [means.get((m, start, str(it)), math.nan) for m in models]
            label = f"{start}: start" if it == 0 else (f"{start}: {it} corrections" if it == n_iterations - 1 else None)
            axes.bar(np.arange(len(models)) + offset, heights, width, color=colors[it], label=label)
    axes.set_xticks(np.arange(len(models)), models)
    axes.set_ylim(0, 1)
    axes.set_ylabel("Dice")
    axes.set_title("Interactive 2D segmentation: Dice per correction iteration")
    axes.legend(fontsize="small", ncol=2 * len(starts), loc="upper center", bbox_to_anchor=(0.5, -0.1))
    return _save(figure, path)


def plot_interactive_2d_curves(summary: Sequence[Mapping[str, object]], path: PathLike) -> Path:
    """Dice against the correction iteration, one line per model (the paper's Fig. 7a), per start."""
    plt = _get_pyplot()
    means = get_dataset_mean(summary, ("model", "start", "iteration"))
    starts = [s for s in START_COLORMAPS if any(key[1] == s for key in means)]
    figure, axes = plt.subplots(1, len(starts), figsize=(5.0 * len(starts), 4.0), squeeze=False, sharey=True)
    for ax, start in zip(axes[0], starts):
        for model in _get_models(summary):
            points = sorted((int(k[2]), v) for k, v in means.items() if k[0] == model and k[1] == start)
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=model)
        ax.set_title(f"start: {start}")
        ax.set_xlabel("correction iteration")
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
    axes[0, 0].set_ylabel("Dice")
    axes[0, -1].legend(fontsize="small")
    return _save(figure, path)


def plot_interactive_3d(summary: Sequence[Mapping[str, object]], path: PathLike) -> Path:
    """Grouped bars per model: mean 3D Dice from a point and from a box start.

    Error bars (std over objects) only for a single dataset; several datasets are averaged.
    """
    plt = _get_pyplot()
    means = get_dataset_mean(summary, ("model", "start"))
    single_dataset = len({e["dataset"] for e in summary}) == 1
    stds = {(str(e["model"]), str(e["start"])): float(e["std"]) if single_dataset else 0.0 for e in summary}
    models = _get_models(summary)
    starts = [s for s in START_COLORMAPS if any(key[1] == s for key in means)]
    width = 0.8 / max(len(starts), 1)
    figure, axes = plt.subplots(figsize=(max(5.0, 1.8 * len(models)), 4.0))
    for s, start in enumerate(starts):
        heights = [means.get((m, start), math.nan) for m in models]
        errors = [stds.get((m, start), 0.0) for m in models]
        axes.bar(np.arange(len(models)) + (s - (len(starts) - 1) / 2) * width, heights, width, yerr=errors,
                 capsize=3, color=plt.get_cmap(START_COLORMAPS[start])(0.6), label=start)
    axes.set_xticks(np.arange(len(models)), models)
    axes.set_ylim(0, 1)
    axes.set_ylabel("Dice (test split)")
    axes.set_title("Interactive 3D segmentation")
    axes.legend(fontsize="small")
    return _save(figure, path)


def _save(figure, path: PathLike) -> Path:
    path = Path(path)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    import matplotlib.pyplot as plt

    plt.close(figure)
    return path


def write_markdown(path: PathLike, sections: Sequence[Tuple[str, str]], title: Optional[str] = None) -> Path:
    """A markdown file of (heading, body) sections."""
    parts = [f"# {title}\n"] if title else []
    parts += [f"## {heading}\n\n{body}" for heading, body in sections]
    path = Path(path)
    path.write_text("\n".join(parts))
    return path


# ---------------------------------------------------------------- the reports of each evaluation


def write_report_2d(rows: Sequence[Mapping[str, object]], output_dir: PathLike) -> List[Path]:
    """summary_2d.csv / .md (mean Dice per model, dataset, start and iteration) and the two plots."""
    output_dir = Path(output_dir)
    summary = get_summary(rows, ("model", "dataset", "start", "iteration"))
    if not summary:
        return []
    header, body = get_pivot(summary, ("model", "dataset", "start"), "iteration")
    counts = {(e["model"], e["dataset"], e["start"]): e["n"] for e in summary}
    header = [*header[:3], "objects", *(f"it {c}" for c in header[3:])]
    body = [[*row[:3], counts[tuple(row[:3])], *row[3:]] for row in body]
    markdown = get_markdown_table(header, body)
    note = ("Mean Dice over objects after the start prompt (it 0) and each correction iteration "
            "(one positive + one negative click each). See docs/evaluation.md.\n\n")
    return [write_table_csv(summary, output_dir / "summary_2d.csv"),
            write_markdown(output_dir / "summary_2d.md", [("Interactive 2D segmentation", note + markdown)]),
            plot_interactive_2d(summary, output_dir / "interactive_2d_bars.png"),
            plot_interactive_2d_curves(summary, output_dir / "interactive_2d_curves.png")]


def write_report_3d(rows: Sequence[Mapping[str, object]], output_dir: PathLike) -> List[Path]:
    """propagation_search.csv (validation grid), summary_3d.csv / .md (test, chosen setting) and the plot.

    A setting is every propagation field (`interactive_3d.SETTING_FIELDS`), a column each.
    """
    output_dir = Path(output_dir)
    fields = ("model", "dataset", "propagation", "start", *SETTING_FIELDS)
    search = get_summary([r for r in rows if r["split"] == "val"], fields)
    val_dice = {tuple(str(e[f]) for f in fields): e["mean"] for e in search}
    summary = get_summary([r for r in rows if r["split"] == "test"], fields)
    for entry in summary:
        entry["val_dice"] = val_dice.get(tuple(str(entry[f]) for f in fields), math.nan)
    paths = [write_table_csv(search, output_dir / "propagation_search.csv")] if search else []
    if not summary:
        return paths
    columns = [*fields, "val_dice", "mean", "std", "n"]
    markdown = get_markdown_table([*fields, "val Dice", "test Dice", "std", "objects"],
                                  [[e[c] for c in columns] for e in summary])
    note = ("Dice per object of the propagated 3D mask, start prompt on the object's central slice. The "
            "propagation setting was chosen on the validation split (val Dice; empty: fixed setting) and "
            "applied unchanged to the test split; SAM2 models propagate natively without a grid search (propagation: "
            "native propagation, no grid search). See docs/evaluation.md.\n\n")
    return paths + [write_table_csv(summary, output_dir / "summary_3d.csv"),
                    write_markdown(output_dir / "summary_3d.md", [("Interactive 3D segmentation", note + markdown)]),
                    plot_interactive_3d(summary, output_dir / "interactive_3d.png")]


def write_report_semantic(rows: Sequence[Mapping[str, object]], output_dir: PathLike) -> List[Path]:
    """summary_semantic.csv / .md: per model, mean Dice per class over the images that contain it, and their mean.

    `n` ("images" in the markdown) counts images: those containing the class, and for the mean row
    every image scored.
    """
    output_dir = Path(output_dir)
    summary = get_summary(rows, ("model", "dataset", "class"))
    means = get_summary([{**e, "dice": e["mean"]} for e in summary], ("model", "dataset"))
    images: Dict[Tuple[str, str], set] = {}  # the mean row counts images (scored in any class), not classes
    for row in rows:
        if not math.isnan(float(row["dice"])):
            images.setdefault((str(row["model"]), str(row["dataset"])), set()).add(str(row["image"]))
    summary += [{"model": e["model"], "dataset": e["dataset"], "class": "mean", "mean": e["mean"], "std": e["std"],
                 "n": len(images.get((e["model"], e["dataset"]), ()))} for e in means]
    body = [[e["model"], e["dataset"], e["class"], e["mean"], e["std"], e["n"]] for e in summary]
    markdown = get_markdown_table(["model", "dataset", "class", "Dice", "std", "images"], body)
    return [write_table_csv(summary, output_dir / "summary_semantic.csv"),
            write_markdown(output_dir / "summary_semantic.md", [("Semantic segmentation", markdown)])]
