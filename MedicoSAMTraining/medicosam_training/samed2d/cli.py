"""`medicosam data convert-samed2d V1_FOLDER OUT_FOLDER`: SA-Med2D-20M's v1 folder -> v2 HDF5 shards.

`register(subparsers)` is the `medicosam.cli` entry point; h5py, scikit-image and torch are imported
only when the command runs (the converter imports them inside its functions).
"""

from __future__ import annotations

from medicosam import options

from ..extras import needs_training_extra
from .convert import ConvertConfig


def register(subparsers) -> None:
    """Add `medicosam data` and its sub-command `convert-samed2d`."""
    data = subparsers.add_parser("data", help="prepare training data (SA-Med2D-20M -> HDF5 shards)",
                                 description="Prepare training data sets.")
    actions = data.add_subparsers(dest="data_command", required=True)
    convert = actions.add_parser(
        "convert-samed2d", help="write torch-em's SA-Med2D v2 HDF5 shards from the v1 folder",
        description="Write SA-Med2D-20M's v1 folder (SAMed2D_v1.json, images/, masks/) as torch-em's v2 HDF5 "
                    "shards <dataset>_<shard:02d>.h5 (raw (3, N, 512, 512), labels (N, 512, 512), lzf), the "
                    "format MedicoSAM v2 was trained from. Shards already in OUT_FOLDER are kept, so a stopped "
                    "run continues. See docs/data.md.")
    convert.add_argument("v1_folder", metavar="V1_FOLDER", help="the unpacked SAMed2Dv1 folder")
    convert.add_argument("out_folder", metavar="OUT_FOLDER", help="folder for the shards")
    options.add_options(convert, ConvertConfig)
    convert.set_defaults(func=needs_training_extra(_convert), needs_torch=False)


def _convert(args) -> int:
    from tqdm import tqdm

    from .convert import convert_samed2d

    config = options.get_options(args, ConvertConfig)
    with tqdm(unit="image", desc="SA-Med2D -> shards") as bar:
        def progress(done: int, total: int) -> None:
            bar.total, bar.n = total, done
            bar.refresh()

        summary = convert_samed2d(args.v1_folder, args.out_folder, config, progress=progress)
    print(f"{summary.shards_written} shards written ({summary.images_written} images, {summary.images_skipped} "
          f"left out), {summary.shards_kept} already there, in {args.out_folder}")
    return 0
