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

from .errors import Cancelled, InputError, MedicoSAMError

#: Options whose value is a coordinate triplet that may start with a minus sign.
_COORDINATE_OPTIONS = ("--point", "--neg-point", "--box")
_NEGATIVE_NUMBER = re.compile(r"^-\.?\d")
_NUMBER = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?,?$")
#: One help text for `--allow-custom`, in every command that loads a SAM model (`add_allow_custom`).
ALLOW_CUSTOM_HELP = ("also build SAM checkpoints of non-official sizes from files MedicoSAM did not write "
                     "(its own exports and training files never need it)")


def _load_plugins(subparsers) -> None:
    eps = entry_points()
    group = eps.select(group="medicosam.cli") if hasattr(eps, "select") else eps.get("medicosam.cli", [])
    for ep in group:
        ep.load()(subparsers)


class _ProgressBar:
    """A tqdm bar behind MedicoSAM's `progress(done, total)` callbacks, opened on the first report.

    Its total only grows: a propagation that stops early reports its end as done == total (for the
    effect's 100 %), which would redraw 2/94 as 2/2; the bar stays at 2/94 and the summary says why.
    """

    def __init__(self, description: str, **tqdm_kwargs):
        self.description, self.kwargs, self.bar = description, tqdm_kwargs, None

    def __call__(self, done: int, total: Optional[int]) -> bool:
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(desc=self.description, total=total, **self.kwargs)
        if total is not None and (self.bar.total is None or total > self.bar.total):
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

    if args.action is None:
        raise InputError("`medicosam models` needs an action: `list` (no name), or `download`, `verify`, `remove` or "
                         "`path` followed by model names, e.g. `medicosam models list`")
    if args.action == "list":
        _print_model_list(download)
        return 0
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


def _print_model_list(download) -> None:
    """The registry and the cache's URL downloads as aligned columns, under a header naming the cache."""
    from .models.registry import MODELS

    cached = {entry.name: entry for entry in download.list_cached_models()}
    rows = [(name, spec.arch, "cached" if name in cached and cached[name].complete else "not downloaded",
             spec.description) for name, spec in MODELS.items()]
    rows += [(name, "?", "cached" if entry.complete else "partial", str(entry.path))
             for name, entry in cached.items() if name not in MODELS]
    print(f"cache: {download.get_cache_dir()} (MEDICOSAM_CACHE_DIR moves it)")
    widths = [max(len(row[column]) for row in [_MODEL_COLUMNS, *rows]) for column in range(3)]
    for row in [_MODEL_COLUMNS, *rows]:
        print("  ".join(value.ljust(width) for value, width in zip(row, widths)) + "  " + row[3])


_MODEL_COLUMNS = ("NAME", "ARCH", "STATE", "DESCRIPTION")


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


def _take_threads_first(argv: List[str]) -> List[str]:
    """`segment ... --threads 2` -> `--threads 2 segment ...`: the main parser's option, accepted anywhere."""
    front: List[str] = []
    rest: List[str] = []
    tokens = iter(argv)
    for token in tokens:
        if token == "--threads":
            front += [token, *[value for value in [next(tokens, None)] if value is not None]]
        elif token.startswith("--threads="):
            front.append(token)
        else:
            rest.append(token)
    return front + rest


def _explain_unrecognized(argv: List[str], unknown: List[str]) -> str:
    """argparse's complaint, with the fix when a coordinate's numbers were separated by spaces."""
    message = f"unrecognized arguments: {' '.join(unknown)}"
    for i, token in enumerate(argv):
        values = argv[i + 1:i + 4]
        if token in _COORDINATE_OPTIONS and len(values) == 3 and all(map(_NUMBER.match, values)) \
                and any(value in unknown for value in values[1:]):
            joined = ",".join(value.rstrip(",") for value in values)
            return f"{message} (coordinates are comma-separated: {token} {joined})"
    return message


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
        allow_custom=args.allow_custom, points=_parse_triplets(args.point, "--point"),
        negative_points=_parse_triplets(args.neg_point, "--neg-point"), box=_parse_triplets(args.box, "--box"),
        markups=args.markups or [], rois=args.roi or [], series_uid=args.series,
        propagation=get_options(args, PropagationConfig),
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
    actions = models.add_subparsers(dest="action", metavar="ACTION")
    actions.add_parser("list", help="the registry, what is cached and where (takes no name)")
    for action, help_text in (("download", "download into the cache (resumable, hash-verified)"),
                              ("verify", "rehash cached models (a corrupt one is removed)"),
                              ("remove", "delete cached models"),
                              ("path", "where a model's file goes in the cache (to place a copy by hand)")):
        names = actions.add_parser(action, help=help_text)
        names.add_argument("names", nargs="+", metavar="NAME", help="registry names (see `medicosam models list`)")
        if action == "download":
            names.add_argument("--offline", action="store_true", default=None, help="never use the network")
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
    seg.add_argument("--out", required=True, metavar="FILE|FOLDER",
                     help="what to write, on the image's grid: a label image (.nii.gz, .nii, .nrrd, .mha), a Slicer "
                          "segmentation (.seg.nrrd) or, from a DICOM series, DICOM SEG (.dcm, or an existing folder "
                          "to write it in)")
    seg.set_defaults(func=_segment)

    serve = subparsers.add_parser("serve", help="serve one SAM model over HTTP to many annotators (docs/server.md)")
    _add_model_options(serve, "", required=True)
    add_options(serve, ServeConfig)
    serve.set_defaults(func=_serve)


def _add_model_options(parser, note: str, required: bool = False) -> None:
    model = parser.add_mutually_exclusive_group(required=required)
    model.add_argument("--model", help=f"registry name (see `medicosam models list`) or URL{note}")
    model.add_argument("--checkpoint", help=f"local SAM-format checkpoint file{note}")
    add_allow_custom(parser)


def add_allow_custom(parser) -> None:
    """`--allow-custom` (`args.allow_custom`), the same in every command that loads a SAM model."""
    parser.add_argument("--allow-custom", action="store_true", help=ALLOW_CUSTOM_HELP)


def _serve(args) -> int:
    from .options import get_options
    from .server.config import ServeConfig
    from .server.run import serve

    bar = _byte_bar("weights")
    try:
        serve(get_options(args, ServeConfig, model=args.checkpoint or args.model, allow_custom=args.allow_custom),
              download_progress=bar)
    finally:
        bar.close()
    return 0


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="medicosam", description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, metavar="N",
                        help="CPU threads for torch (default: one per core this process may use; "
                             "also $MEDICOSAM_NUM_THREADS); also accepted after the command")
    subparsers = parser.add_subparsers(dest="command", required=True)
    _add_core_commands(subparsers)
    _load_plugins(subparsers)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    from .device import configure_threads

    logging.basicConfig(format="medicosam: %(levelname)s: %(message)s", level=logging.WARNING)
    parser = get_parser()
    argv = _attach_negative_coordinates(_take_threads_first(sys.argv[1:] if argv is None else argv))
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        parser.error(_explain_unrecognized(argv, unknown))
    try:
        if args.threads is not None and args.threads < 1:
            raise InputError(f"--threads {args.threads}: use 1 or more")
        if getattr(args, "needs_torch", True):  # `models` never imports torch: it starts in a fraction of a second
            configure_threads(args.threads)
        return int(args.func(args) or 0)
    except Cancelled as error:  # the user stopped it (a command that knows what is kept says so)
        print(f"medicosam: {error}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:  # Ctrl-C anywhere else: the writers are atomic, nothing half-written is left
        print("medicosam: stopped (Ctrl-C)", file=sys.stderr)
        return 130
    except MedicoSAMError as error:
        print(f"medicosam: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
