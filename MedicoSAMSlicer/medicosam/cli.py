"""The `medicosam` command.

The core defines `models` and `segment`; other installed packages add sub-commands through the
`medicosam.cli` entry-point group (a function `register(subparsers)` that adds parsers whose
`func(args) -> int` runs the command). That is how `medicosam train`, `export`, `demo` and
`evaluate` arrive from the training package without the core importing it.
"""

from __future__ import annotations

import argparse
import logging
import math
import re
import sys
from importlib.metadata import entry_points
from typing import List, Optional

from .errors import InputError, MedicoSAMError

#: Options whose value is a coordinate triplet that may start with a minus sign.
_COORDINATE_OPTIONS = ("--point", "--neg-point", "--box")
_NEGATIVE_NUMBER = re.compile(r"^-\.?\d")


def _load_plugins(subparsers) -> None:
    eps = entry_points()
    group = eps.select(group="medicosam.cli") if hasattr(eps, "select") else eps.get("medicosam.cli", [])
    for ep in group:
        ep.load()(subparsers)


class _ProgressBar:
    """A tqdm bar behind MedicoSAM's `progress(done, total)` callbacks, opened on the first report."""

    def __init__(self, description: str, **tqdm_kwargs):
        self.description, self.kwargs, self.bar = description, tqdm_kwargs, None

    def __call__(self, done: int, total: Optional[int]) -> bool:
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(desc=self.description, **self.kwargs)
        self.bar.total = total
        self.bar.n = done
        self.bar.refresh()
        return True

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _byte_bar(description: str) -> _ProgressBar:
    return _ProgressBar(description, unit="B", unit_scale=True, unit_divisor=1024)


def _models(args) -> int:
    from .models import download
    from .models.registry import MODELS

    if args.action == "list":
        cached = {entry.name: entry for entry in download.list_cached_models()}
        for name, spec in MODELS.items():
            state = "cached" if name in cached and cached[name].complete else "not downloaded"
            print(f"{name:28s} {spec.arch:6s} {state:15s} {spec.description}")
        for name, entry in cached.items():
            if name not in MODELS:
                print(f"{name:28s} {'?':6s} {'cached' if entry.complete else 'partial':15s} {entry.path}")
        return 0
    if not args.names:
        raise InputError(f"`medicosam models {args.action}` needs at least one model name")
    status = 0
    for name in args.names:
        if args.action == "download":
            bar = _byte_bar(name)
            try:
                path = download.download_model(name, progress=bar, offline=args.offline)
            finally:
                bar.close()
            print(path)
        elif args.action == "path":
            print(download.get_model_path(name))
        elif args.action == "verify":
            ok = download.verify_cached_model(name)
            print(f"{name}: " + {True: "ok", False: "corrupt (removed: the next use downloads it again)",
                                 None: "not downloaded"}[ok])
            status |= 0 if ok else 1
        elif args.action == "remove":
            print(f"{name}: {'removed' if download.remove_cached_model(name) else 'not cached'}")
    return status


def _parse_triplets(values: Optional[List[str]], what: str) -> List[List[float]]:
    triplets = []
    for value in values or []:
        try:
            triplet = [float(p) for p in value.split(",")]
        except ValueError:
            triplet = []
        if len(triplet) != 3 or not all(map(math.isfinite, triplet)):
            raise InputError(f"{what} {value!r} must be three finite comma-separated numbers, e.g. 10.5,-20,33")
        triplets.append(triplet)
    return triplets


def _attach_negative_coordinates(argv: List[str]) -> List[str]:
    """`--point -12,5,3` -> `--point=-12,5,3`: argparse takes a value starting with '-' for an option."""
    joined: List[str] = []
    for token in argv:
        if joined and joined[-1] in _COORDINATE_OPTIONS and _NEGATIVE_NUMBER.match(token):
            joined[-1] = f"{joined[-1]}={token}"
        else:
            joined.append(token)
    return joined


def _segment(args) -> int:
    from .options import get_options
    from .propagation import PropagationConfig
    from .segment import SegmentRequest, segment_volume

    if not (args.checkpoint or args.model or args.server):
        raise InputError("give --model NAME or --checkpoint PATH (or --server URL to use a `medicosam serve`)")
    request = get_options(
        args, SegmentRequest, image=args.image, out=args.out, model=args.checkpoint or args.model or "",
        points=_parse_triplets(args.point, "--point"), negative_points=_parse_triplets(args.neg_point, "--neg-point"),
        box=_parse_triplets(args.box, "--box"), markups=args.markups or [], rois=args.roi or [],
        series_uid=args.series, propagation=get_options(args, PropagationConfig),
    )
    bars = _ProgressBar("propagating", unit="slice"), _byte_bar("weights")
    try:
        summary = segment_volume(request, progress=bars[0], download_progress=bars[1])
    finally:
        for bar in bars:
            bar.close()
    print(summary)
    return 0


def _add_core_commands(subparsers) -> None:
    from .options import add_options
    from .propagation import PropagationConfig
    from .segment import SegmentRequest
    from .server.config import ServeConfig

    models = subparsers.add_parser("models", help="list, download, verify or remove SAM checkpoints")
    models.add_argument("action", choices=["list", "download", "verify", "remove", "path"])
    models.add_argument("names", nargs="*", help="registry names (see `medicosam models list`)")
    models.add_argument("--offline", action="store_true", default=None, help="never use the network")
    models.set_defaults(func=_models, needs_torch=False)

    seg = subparsers.add_parser("segment", help="segment a structure in a volume from point / box prompts")
    seg.add_argument("image", help="NIfTI, NRRD, MHA file or DICOM series folder")
    seg.add_argument("--series", metavar="UID", help="the DICOM series to read from a folder holding several")
    seg.add_argument("--point", action="append", metavar="R,A,S",
                     help="positive point (repeatable); negative values work as --point -12,5,3 or --point=-12,5,3")
    seg.add_argument("--neg-point", action="append", metavar="R,A,S",
                     help="negative point (repeatable), on the slice of a positive point or of the box")
    seg.add_argument("--box", action="append", metavar="R,A,S",
                     help="two opposite box corners (give twice), on one slice")
    seg.add_argument("--markups", action="append", metavar="FILE.mrk.json",
                     help="Slicer point list, closed curve (lasso: a box and mask prompt) or curve (scribble: points "
                          "along it) (repeatable): negative if its file name contains 'negative' or a point's "
                          "label/description starts with '-'; undefined points are skipped")
    seg.add_argument("--roi", action="append", metavar="FILE.mrk.json",
                     help="Slicer ROI: its box on the prompted slices (the one its centre is on, and those with "
                          "points); propagation stays within the slices it covers when it spans several")
    _add_model_options(seg, "; not needed with --server")
    add_options(seg, SegmentRequest)
    add_options(seg.add_argument_group("propagation (with --propagate)"), PropagationConfig)
    seg.add_argument("--out", required=True, help="mask file to write (same grid as the image): .nii.gz, .nii, "
                     ".nrrd or .mha")
    seg.set_defaults(func=_segment)

    serve = subparsers.add_parser("serve", help="serve one SAM model over HTTP to many annotators (docs/server.md)")
    _add_model_options(serve, "", required=True)
    add_options(serve, ServeConfig)
    serve.set_defaults(func=_serve)


def _add_model_options(parser, note: str, required: bool = False) -> None:
    model = parser.add_mutually_exclusive_group(required=required)
    model.add_argument("--model", help=f"registry name (see `medicosam models list`) or URL{note}")
    model.add_argument("--checkpoint", help=f"local SAM-format checkpoint file{note}")


def _serve(args) -> int:
    from .options import get_options
    from .server.config import ServeConfig
    from .server.run import serve

    bar = _byte_bar("weights")
    try:
        serve(get_options(args, ServeConfig, model=args.checkpoint or args.model), download_progress=bar)
    finally:
        bar.close()
    return 0


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="medicosam", description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, metavar="N",
                        help="CPU threads for torch (default: one per core this process may use; "
                             "also $MEDICOSAM_NUM_THREADS)")
    subparsers = parser.add_subparsers(dest="command", required=True)
    _add_core_commands(subparsers)
    _load_plugins(subparsers)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    from .device import configure_threads

    logging.basicConfig(format="medicosam: %(levelname)s: %(message)s", level=logging.WARNING)
    args = get_parser().parse_args(_attach_negative_coordinates(sys.argv[1:] if argv is None else argv))
    try:
        if args.threads is not None and args.threads < 1:
            raise InputError(f"--threads {args.threads}: use 1 or more")
        if getattr(args, "needs_torch", True):  # `models` never imports torch: it starts in a fraction of a second
            configure_threads(args.threads)
        return int(args.func(args) or 0)
    except MedicoSAMError as error:
        print(f"medicosam: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
