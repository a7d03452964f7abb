"""`medicosam evaluate interactive-2d | interactive-3d | semantic`: the paper's evaluations on folders.

Every command writes into `--out`: a CSV of every measurement (appended as objects finish, so an
interrupted run resumes where it stopped when started again with the same arguments), summary
tables (CSV and markdown) and plots. Running again with other models adds them to the same tables
and plots. Models are registry names, checkpoint files or URLs; `LABEL=MODEL` sets the name shown.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import List, Tuple

from medicosam.cli import add_allow_custom
from medicosam.errors import InputError
from medicosam.normalization import PRESETS
from medicosam.prompts import CORRECTION_MODES, PROPAGATION_MODES

from ..extras import needs_training_extra
from ..records import parse_classes
from .data import LabeledFolder
from .interactive_2d import FIELDS_2D, KEY_FIELDS_2D, Interactive2DConfig, evaluate_interactive_2d
from .interactive_3d import (
    FIELDS_3D,
    FILL_3D,
    KEY_FIELDS_3D,
    Interactive3DConfig,
    PropagationGrid,
    evaluate_interactive_3d,
    select_best_settings,
)
from .protocol import START_PROMPTS
from .reports import write_report_2d, write_report_3d, write_report_semantic
from .results import ResultsCSV, bind_model, open_results

logger = logging.getLogger(__name__)


def register(subparsers) -> None:
    """Add `evaluate` and its sub-commands to the `medicosam` command."""
    parser = subparsers.add_parser("evaluate", help="evaluate models like the paper (interactive 2D / 3D, semantic)",
                                   description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="evaluation", required=True)
    _add_interactive_2d(commands)
    _add_interactive_3d(commands)
    _add_semantic(commands)


def _add_common(parser: argparse.ArgumentParser, ndim: int, config_class) -> None:
    """The options both interactive protocols have; defaults are `config_class`'s."""
    what = "images" if ndim == 2 else "volumes (NIfTI, NRRD, MHA)"
    unit = "pixels" if ndim == 2 else "voxels"
    parser.add_argument("--images", required=True, help=f"folder of {what}")
    parser.add_argument("--labels", help="folder of label maps (or .seg.nrrd files) with the same file names "
                                          "(0 = background); default: --images, holding volumes beside their "
                                          ".seg.nrrd files or DICOM series folders beside DICOM SEG files")
    parser.add_argument("--out", required=True, help="folder for the CSV, summaries and plots")
    parser.add_argument("--dataset", help="dataset name in the tables (default: the data folder's name)")
    parser.add_argument("--model", action="append", required=True, metavar="[LABEL=]MODEL",
                        help="registry name, checkpoint file or URL; repeat to compare models")
    parser.add_argument("--starts", nargs="+", choices=START_PROMPTS, default=list(START_PROMPTS),
                        help="start prompts to evaluate")
    parser.add_argument("--classes", nargs="+", metavar="ID|NAME",
                        help="class ids to evaluate (default: all); for .seg.nrrd / DICOM SEG labels the segment "
                             "names -> class ids 1, 2, ... (or one JSON file: a list, or {name: id}, 0 = leave "
                             "out), needed so every file's segments get the same ids; other names are an error")
    parser.add_argument("--min-size", type=int, default=config_class.min_size,
                        help=f"smallest object in {unit} (default: {config_class.min_size})")
    parser.add_argument("--window", default=config_class.window, choices=PRESETS,
                        help=f"intensity mapping per image / volume (default: {config_class.window})")
    parser.add_argument("--max-images", type=int, help="use only the first N images (the paper: 200)")
    parser.add_argument("--max-objects", type=int,
                        help="stop after N newly finished objects (an object with every start prompt, and in 3D "
                             "every setting), counted over all models; run the same command again to continue")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    parser.add_argument("--fast", action=argparse.BooleanOptionalAction, default=config_class.fast,
                        help="the fast path (SDPA attention, bf16 where the device is fast at it), or the official "
                             "fp32 path behind the paper's numbers (default: "
                             f"{'--fast' if config_class.fast else '--no-fast'})")
    parser.add_argument("--offline", action="store_true", default=None, help="never download models")
    add_allow_custom(parser)
    parser.add_argument("--overwrite", action="store_true", help="discard earlier results in --out")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def _add_interactive_2d(commands) -> None:
    parser = commands.add_parser("interactive-2d", help="start prompt + correction clicks, Dice per iteration")
    _add_common(parser, 2, Interactive2DConfig)
    defaults = Interactive2DConfig()
    parser.add_argument("--corrections", type=int, default=defaults.n_corrections,
                        help=f"correction iterations after the start (default: {defaults.n_corrections})")
    parser.add_argument("--use-mask-prompt", action="store_true", default=defaults.use_mask_prompt,
                        help="feed the previous logits back as mask prompt")
    parser.add_argument("--correction-mode", choices=CORRECTION_MODES, default=defaults.correction_mode,
                        help="click a random error pixel (the paper) or the centre of the largest error "
                             f"(default: {defaults.correction_mode})")
    parser.add_argument("--seed", type=int, default=defaults.seed,
                        help=f"seed of the correction clicks (default: {defaults.seed})")
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size,
                        help=f"objects of an image decoded together (default: {defaults.batch_size})")
    parser.set_defaults(func=needs_training_extra(_run_interactive_2d))


def _add_interactive_3d(commands) -> None:
    parser = commands.add_parser("interactive-3d", help="central-slice prompt + propagation, Dice per object")
    _add_common(parser, 3, Interactive3DConfig)
    defaults = Interactive3DConfig()
    parser.add_argument("--val-images", help="validation volumes for the grid search of propagation settings")
    parser.add_argument("--val-labels", help="their label maps (default: --val-images, as for --labels)")
    parser.add_argument("--axis", type=int, default=defaults.axis, choices=(0, 1, 2),
                        help=f"array axis to propagate along (KJI; default: {defaults.axis})")
    parser.add_argument("--modes", nargs="+", choices=PROPAGATION_MODES,
                        help="propagation modes to search (default: all; without validation data: single_point)")
    parser.add_argument("--iou-thresholds", nargs="+", type=float, help="stop IoU values to search "
                                                                        "(default: 0.5..0.9; without validation: 0.5)")
    parser.add_argument("--box-extensions", nargs="+", type=float,
                        help="box extensions to search (default: 0..0.25; without validation: 0.05)")
    parser.add_argument("--min-slice-size", type=int, default=defaults.min_slice_size,
                        help=f"smallest object area on its central slice (default: {defaults.min_slice_size})")
    parser.add_argument("--components", action="store_true", default=defaults.split_components,
                        help="one object per connected component (default: one per class)")
    parser.set_defaults(func=needs_training_extra(_run_interactive_3d))


def _add_semantic(commands) -> None:
    parser = commands.add_parser("semantic", help="Dice per class of predicted label maps (2D or 3D)",
                                 description="Score a folder of predicted label maps (--predictions), or run "
                                             "semantic models (--model, see `medicosam train-semantic`) on --images "
                                             "first; predictions go to OUT/predictions/<model>/.")
    parser.add_argument("--predictions", help="folder of predicted label maps")
    parser.add_argument("--model", action="append", metavar="[LABEL=]CHECKPOINT",
                        help="semantic checkpoint to run on --images (repeat to compare models)")
    parser.add_argument("--images", help="folder of images or volumes for --model")
    parser.add_argument("--labels", required=True, help="folder of true label maps with the same file names")
    parser.add_argument("--out", required=True, help="folder for semantic.csv and the summary")
    parser.add_argument("--dataset", help="dataset name in the tables (default: the data folder's name)")
    parser.add_argument("--classes", nargs="+", type=int, help="class ids to score (default: all present)")
    parser.add_argument("--axis", type=int, default=0, choices=(0, 1, 2), help="slicing axis of --model (KJI)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or mps (for --model)")
    parser.set_defaults(func=needs_training_extra(_run_semantic))


# ---------------------------------------------------------------- helpers


def _get_model_specs(values: List[str]) -> List[Tuple[str, str]]:
    """(label, registry name / path / URL) from `[LABEL=]MODEL` arguments."""
    specs = []
    for value in values:
        label, sep, source = value.partition("=")
        if not sep or "://" in label:
            label, source = Path(value).stem if Path(value).suffix else value, value
        specs.append((label, source))
    return specs


def _get_dataset_name(folder: str) -> str:
    """A data folder's name, or its parent's for the usual `<dataset>/images` (or labels) layouts."""
    path = Path(folder).resolve()
    generic = {f"{kind}{suffix}" for kind in ("images", "labels") for suffix in ("", "Tr", "Ts")}
    return path.parent.name if path.name in generic else path.name


def _load_model(label: str, source: str, args, results: ResultsCSV):
    """The model `source`, bound to `label` in the output folder's protocol file (see `bind_model`)."""
    from medicosam.device import get_device
    from medicosam.models.checkpoint import load_sam

    loaded = load_sam(source, device=str(get_device(args.device)), allow_custom=args.allow_custom,
                      offline=args.offline)
    bind_model(results.path.with_suffix(".json"), label, loaded.model_id, source)
    return loaded


def _report(paths: List[Path], complete: bool) -> int:
    for path in paths:
        print(f"wrote {path}")
    if not complete:
        print("stopped early (--max-objects): run the same command again to continue")
    return 0


# ---------------------------------------------------------------- commands


def _run_interactive_2d(args) -> int:
    classes, class_map = parse_classes(args.classes)
    config = Interactive2DConfig(n_corrections=args.corrections, use_mask_prompt=args.use_mask_prompt,
                                 correction_mode=args.correction_mode, min_size=args.min_size,
                                 classes=classes, seed=args.seed, batch_size=args.batch_size, window=args.window,
                                 fast=args.fast)
    samples = LabeledFolder(args.images, args.labels, ndim=2, max_items=args.max_images, class_map=class_map)
    dataset = args.dataset or _get_dataset_name(args.images)
    output = Path(args.out)
    protocol = {key: value for key, value in vars(config).items() if key != "batch_size"}
    results = open_results(output, "interactive_2d", protocol, FIELDS_2D, KEY_FIELDS_2D,
                           rows_per_key=config.n_corrections + 1, overwrite=args.overwrite)
    budget = args.max_objects
    complete = True
    for label, source in _get_model_specs(args.model):
        loaded = _load_model(label, source, args, results)
        run = evaluate_interactive_2d(loaded, samples, config, starts=args.starts, model=label, dataset=dataset,
                                      results=results, max_objects=budget, show_progress=not args.quiet)
        budget = None if budget is None else budget - run.n_objects
        if not run.complete:
            complete = False
            break
    return _report([results.path, *write_report_2d(results.rows, output)], complete)


def _get_grid(args, with_validation: bool) -> PropagationGrid:
    """The propagation settings to search; without validation data, one setting (for every family)."""
    from medicosam.propagation import PropagationConfig

    defaults = PropagationGrid() if with_validation else None
    grid = PropagationGrid(
        modes=tuple(args.modes or (defaults.modes if defaults else (PropagationConfig.mode,))),
        iou_thresholds=tuple(args.iou_thresholds or (defaults.iou_thresholds if defaults
                                                     else (PropagationConfig.iou_threshold,))),
        box_extensions=tuple(args.box_extensions or (defaults.box_extensions if defaults
                                                     else (PropagationConfig.box_extension,))))
    n_settings = len(grid.get_settings())
    if not with_validation and n_settings > 1:
        raise InputError(f"{n_settings} propagation settings but no validation data to choose among "
                         "them: pass --val-images and --val-labels, or one value each for --modes, "
                         "--iou-thresholds and --box-extensions")
    return grid


def _run_interactive_3d(args) -> int:
    with_validation = bool(args.val_images)
    if args.val_labels and not args.val_images:
        raise InputError("--val-labels needs --val-images (or give neither, with one fixed setting)")
    classes, class_map = parse_classes(args.classes)
    config = Interactive3DConfig(axis=args.axis, min_size=args.min_size, min_slice_size=args.min_slice_size,
                                 split_components=args.components, classes=classes, window=args.window,
                                 fast=args.fast)
    grid = _get_grid(args, with_validation)
    test = LabeledFolder(args.images, args.labels, ndim=3, max_items=args.max_images, class_map=class_map)
    val = LabeledFolder(args.val_images, args.val_labels, ndim=3, class_map=class_map) if with_validation else None
    dataset = args.dataset or _get_dataset_name(args.images)
    output = Path(args.out)
    results = open_results(output, "interactive_3d", vars(config), FIELDS_3D, KEY_FIELDS_3D, fill=FILL_3D,
                           overwrite=args.overwrite)
    budget = args.max_objects
    complete = True
    for label, source in _get_model_specs(args.model):
        loaded = _load_model(label, source, args, results)
        kwargs = dict(model=label, model_id=loaded.model_id, dataset=dataset, results=results,
                      show_progress=not args.quiet)
        # the settings its family honours (SAM2's native engine: none of the grid's, so no search)
        settings = grid.get_settings(loaded.family.capabilities.propagation_settings)
        chosen = {start: settings for start in args.starts}
        if len(settings) > 1:
            run = evaluate_interactive_3d(loaded, val, chosen, config, split="val", max_objects=budget, **kwargs)
            budget = None if budget is None else budget - run.n_objects
            if not run.complete:
                complete = False
                break
            best = select_best_settings(results.rows, chosen, label, dataset)
            for start, setting in best.items():
                print(f"{label}, {start} start: best propagation setting {setting.config.mode}, IoU stop "
                      f"{setting.config.iou_threshold}, box extension {setting.config.box_extension} "
                      f"(validation Dice {setting.dice:.3f} over {setting.n} objects)")
            chosen = {start: [setting.config] for start, setting in best.items()}
        run = evaluate_interactive_3d(loaded, test, chosen, config, split="test", max_objects=budget, **kwargs)
        budget = None if budget is None else budget - run.n_objects
        if run.skipped:
            print(f"{label}: skipped {len(run.skipped)} test objects smaller than {config.min_slice_size} px on "
                  "their central slice")
        if not run.complete:
            complete = False
            break
    return _report([results.path, *write_report_3d(results.rows, output)], complete)


def _get_semantic_predictions(args, output: Path) -> List[Tuple[str, Path]]:
    """(model label, predictions folder) pairs: the given folder, or each --model run on --images."""
    if bool(args.predictions) == bool(args.model):
        raise InputError("give either --predictions or --model (with --images)")
    if args.predictions:
        return [(Path(args.predictions).name, Path(args.predictions))]
    if not args.images:
        raise InputError("--model needs --images: the images (or volumes) to segment")
    from medicosam.device import get_device

    from ..semantic.infer import predict_folder
    from ..semantic.models import load_semantic_model

    folders = []
    for label, source in _get_model_specs(args.model):
        folder = output / "predictions" / label
        predict_folder(load_semantic_model(source, str(get_device(args.device))), args.images, folder, args.axis)
        folders.append((label, folder))
    return folders


def _run_semantic(args) -> int:
    import numpy as np

    from medicosam.volume_io import read_volume

    from ..records import check_same_shape, get_folder_records, get_label_array, get_stem
    from .metrics import get_semantic_dice
    from .reports import write_table_csv

    dataset = args.dataset or _get_dataset_name(args.labels)
    output = Path(args.out)
    rows = []
    for model, predictions in _get_semantic_predictions(args, output):
        for record in get_folder_records(predictions, args.labels):
            label_path = record.labels[0]
            prediction = get_label_array(np.asarray(read_volume(record.image).array), record.image)
            target = get_label_array(np.asarray(read_volume(label_path).array), label_path)
            check_same_shape(target, prediction, label_path, record.image)
            for class_id, dice in get_semantic_dice(prediction, target, args.classes).items():
                rows.append({"model": model, "dataset": dataset, "image": get_stem(record.image), "class": class_id,
                             "dice": dice})
    if not rows:
        logger.warning("no class to score: every label map and prediction is all zero (or holds none of "
                       "--classes), so the results are empty; check the label files and --classes")
    output.mkdir(parents=True, exist_ok=True)
    return _report([write_table_csv(rows, output / "semantic.csv"), *write_report_semantic(rows, output)], True)
