"""`medicosam train-semantic | predict-semantic | export-nnunet` (entry point `medicosam.cli`: semantic).

Scoring is `medicosam evaluate semantic` (evaluation/cli.py), which also runs these models.
"""

from __future__ import annotations

import argparse
from typing import Dict, Optional, Tuple

from medicosam.cli import add_allow_custom
from medicosam.errors import InputError

from ..choices import ARCHITECTURES
from ..configs import SemanticTrainConfig
from ..extras import needs_training_extra


def register(subparsers) -> None:
    """Add the semantic segmentation sub-commands to the `medicosam` command."""
    _add_train(subparsers)
    _add_predict(subparsers)
    _add_export(subparsers)


def _add_train(subparsers) -> None:
    defaults = SemanticTrainConfig  # the dataclass's field defaults (a config is made only when the command runs)
    parser = subparsers.add_parser(
        "train-semantic", help="finetune a SAM encoder (or a MONAI baseline) for semantic segmentation",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Train a 2D or 3D semantic model on images/ + labels/ (or imagesTr/ + labelsTr/, or volumes "
                    "beside .seg.nrrd / DICOM SEG files, with --classes NAME ...); the "
                    "best validation model goes to OUT/best.pt. See docs/semantic.md.")
    parser.add_argument("--data", required=True, help="dataset folder (label maps of class ids, 0 = background)")
    parser.add_argument("--classes", nargs="+", required=True, metavar="N|NAME",
                        help="number of classes including background; or, for .seg.nrrd / DICOM SEG labels, the "
                             "segment names -> class ids 1, 2, ... (or one JSON file: a list, or {name: id}, "
                             "0 = leave out; classes = largest id + 1); other names are an error")
    parser.add_argument("--out", default="medicosam-semantic", help="output folder (best.pt, history.json)")
    parser.add_argument("--architecture", choices=("sam", *ARCHITECTURES), default="sam",
                        help="sam (the paper's model) or a baseline: unet, swin_unetr")
    parser.add_argument("--ndim", type=int, choices=(2, 3), default=2, help="2D slice model or 3D model")
    model = parser.add_mutually_exclusive_group()
    model.add_argument("--model", default="medicosam_vit_b", help="start model (SAM, or LiteMedSAM in 2D): registry "
                                                                  "name or URL")
    model.add_argument("--checkpoint", help="start model: a local checkpoint file")
    add_allow_custom(parser)
    parser.add_argument("--decoder", default="auto",
                        help="decoder start: auto (the model's own or its registry companion, else new), none "
                             "(new decoder), or a decoder registry name / file / URL")
    parser.add_argument("--image-size", type=int,
                        help="model input size (default: SAM's own; the paper's 3D models use 512; baselines 256)")
    parser.add_argument("--patch-depth", type=int, help="slices per 3D patch (default 8; swin_unetr 32)")
    parser.add_argument("--decoder-features", type=int, default=64, help="new decoder's width (micro-sam: 64)")
    parser.add_argument("--zero-init-adapters", action="store_true",
                        help="3D: start the depth adapters silent, so the encoder starts as the 2D one "
                             "(default: random, as the paper)")
    parser.add_argument("--baseline-features", type=int, default=24, help="baseline width (SwinUNETR: multiple of 12)")
    parser.add_argument("--axis", type=int, choices=(0, 1, 2), default=0, help="slicing axis of volumes (KJI)")
    parser.add_argument("--iterations", type=int, default=defaults.iterations,
                        help="training steps (medico-sam: 50000)")
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size, help="items per step")
    parser.add_argument("--lr", type=float, default=defaults.lr, help="AdamW learning rate")
    parser.add_argument("--val-every", type=int, default=defaults.val_every, help="validation interval in iterations")
    parser.add_argument("--val-fraction", type=float, default=0.1, help="validation share per modality")
    parser.add_argument("--seed", type=int, default=defaults.seed, help="seeds the split and the data order")
    parser.add_argument("--time-limit", type=float, default=defaults.time_limit_s,
                        help="stop after this many seconds")
    parser.add_argument("--device", default=defaults.device, help="auto, cpu, cuda or mps")
    parser.add_argument("--num-workers", type=int, default=defaults.num_workers,
                        help="data loading processes (None: 0 on the CPU, up to 8 on a GPU)")
    parser.add_argument("--fast", dest="fast_attention", action=argparse.BooleanOptionalAction,
                        default=defaults.fast_attention,
                        help="SDPA attention in the SAM encoder (the same result; on a GPU far less memory); "
                             "unset (None): on CUDA only")
    parser.add_argument("--offline", action="store_true", default=None, help="never download models")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(func=needs_training_extra(_train))


def _add_predict(subparsers) -> None:
    parser = subparsers.add_parser("predict-semantic", help="label maps of a folder with a semantic model",
                                   description="Predict every image / volume of a folder at its own size.")
    parser.add_argument("--model", required=True, help="semantic checkpoint (OUT/best.pt of train-semantic)")
    parser.add_argument("--images", required=True, help="folder of images or volumes")
    parser.add_argument("--out", required=True, help="folder for <stem>.png (2D) / <stem>.nii.gz (3D)")
    parser.add_argument("--axis", type=int, choices=(0, 1, 2), default=0, help="slicing axis (as in training)")
    parser.add_argument("--batch-size", type=int, default=4, help="slices per forward pass (2D models)")
    parser.add_argument("--overlap", type=float, default=0.5, help="sliding-window overlap (3D models)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    parser.set_defaults(func=needs_training_extra(_predict))


def _add_export(subparsers) -> None:
    parser = subparsers.add_parser("export-nnunet", help="write the semantic split as an nnU-Net v2 raw dataset",
                                   description="Write Dataset<ID>_<Name> with our train / validation / test split.")
    parser.add_argument("--data", required=True, help="dataset folder, as for train-semantic")
    parser.add_argument("--out", required=True, help="nnU-Net raw folder ($nnUNet_raw)")
    parser.add_argument("--dataset-id", type=int, required=True, help="three-digit nnU-Net dataset id")
    parser.add_argument("--name", required=True, help="dataset name (letters, digits, _ and -)")
    parser.add_argument("--classes", type=int, required=True, help="number of classes including background")
    parser.add_argument("--class-names", nargs="+", help="names of classes 1..N-1")
    parser.add_argument("--val-fraction", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--channel-name", help="nnU-Net channel name (CT enables CT normalisation)")
    parser.set_defaults(func=needs_training_extra(_export))


def _get_decoder_state(choice: str, loaded, source: str, offline):
    """(decoder state or None, what it is) for `--decoder`."""
    from medicosam.models.checkpoint import load_decoder_state
    from medicosam.models.registry import find_model_spec

    if choice == "none":
        return None, "a new decoder"
    if choice != "auto":
        return load_decoder_state(choice, offline=offline), f"the decoder {choice}"
    if loaded.decoder_state is not None:
        return loaded.decoder_state, f"the decoder stored with {source}"
    spec = find_model_spec(source)  # micro-sam's names too
    if spec is not None and spec.decoder is not None:
        return load_decoder_state(spec.decoder, offline=offline), f"the pretrained decoder {spec.decoder}"
    return None, "a new decoder (the model has none)"


def _get_classes(values) -> Tuple[int, Optional[Dict[str, int]]]:
    """(number of classes including background, segment name -> class id map or None) of `--classes`."""
    from ..records import parse_classes

    ids, class_map = parse_classes(values)
    if class_map is not None:
        return max(class_map.values(), default=0) + 1, class_map
    if len(ids) != 1:
        raise InputError(f"--classes {' '.join(values)}: give the number of classes (one integer) or the class names")
    return ids[0], None


def _get_model(args: argparse.Namespace, n_classes: int):
    from medicosam.models.checkpoint import load_sam

    from .baselines import BaselineConfig, build_baseline_model
    from .models import check_semantic_family, get_semantic_model

    if args.architecture != "sam":
        config = BaselineConfig(args.architecture, args.ndim, n_classes, args.image_size or 256,
                                args.patch_depth or 32, args.baseline_features)
        return build_baseline_model(config), f"{args.architecture} baseline"
    source = args.checkpoint or args.model
    loaded = load_sam(source, allow_custom=args.allow_custom, offline=args.offline)
    check_semantic_family(loaded.family, args.ndim)
    decoder_state, decoder = _get_decoder_state(args.decoder, loaded, source, args.offline)
    model = get_semantic_model(loaded.model, loaded.config, n_classes, args.ndim, family=loaded.family,
                               image_size=args.image_size, decoder_state=decoder_state,
                               decoder_features=args.decoder_features,
                               patch_depth=args.patch_depth or 8, zero_init_adapters=args.zero_init_adapters)
    return model, f"{source} encoder with {decoder}"


def _train(args: argparse.Namespace) -> int:
    from .data import SemanticPatchDataset, SemanticSliceDataset, check_classes, get_split_records, read_case
    from .train import train_semantic

    n_classes, class_map = _get_classes(args.classes)
    split = get_split_records(args.data, args.val_fraction, args.seed)
    cases = {part: [read_case(record, args.axis, class_map) for record in split[part]] for part in ("train", "val")}
    check_classes(cases["train"] + cases["val"], n_classes)
    model, description = _get_model(args, n_classes)
    size = model.config.image_size
    if args.ndim == 2:
        datasets = {part: SemanticSliceDataset(c, size) if c else None for part, c in cases.items()}
    else:
        datasets = {part: SemanticPatchDataset(c, size, model.config.patch_depth) if c else None
                    for part, c in cases.items()}
    print(f"training {args.ndim}D {description}: {len(split['train'])} train / {len(split['val'])} val cases, "
          f"{len(datasets['train'])} items at {size} px")
    config = SemanticTrainConfig(iterations=args.iterations, batch_size=args.batch_size, lr=args.lr,
                                 val_every=args.val_every, seed=args.seed, device=args.device,
                                 num_workers=args.num_workers, fast_attention=args.fast_attention,
                                 out_dir=args.out, time_limit_s=args.time_limit,
                                 progress=not args.quiet)
    result = train_semantic(model, datasets["train"], datasets["val"], config)
    print(f"trained {result.iterations} iterations; best validation mean Dice {result.best_dice:.3f}")
    print(f"model: {result.best_path}")
    return 0


def _predict(args: argparse.Namespace) -> int:
    from medicosam.device import get_device

    from .infer import predict_folder
    from .models import load_semantic_model

    model = load_semantic_model(args.model, str(get_device(args.device)))
    for path in predict_folder(model, args.images, args.out, args.axis, args.batch_size, args.overlap):
        print(f"wrote {path}")
    return 0


def _export(args: argparse.Namespace) -> int:
    from .nnunet_export import check_nnunet_dataset, export_nnunet_dataset

    folder = export_nnunet_dataset(args.data, args.out, args.dataset_id, args.name, args.classes,
                                   args.class_names, args.val_fraction, args.seed, args.channel_name)
    check_nnunet_dataset(folder)
    print(f"wrote {folder} (copy splits_final.json to $nnUNet_preprocessed/{folder.name}/ after planning, then "
          "train fold 0)")
    return 0
