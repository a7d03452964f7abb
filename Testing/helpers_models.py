"""Tiny real SAM models and the checkpoint layouts other tools write, for checkpoint tests."""

from __future__ import annotations

import os
from collections import OrderedDict
from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np
import torch

from medicosam.models.config import SamConfig, build_sam, get_tiny_config


def get_tiny_sam(seed: int = 0, config: Optional[SamConfig] = None):
    """A real `segment_anything` Sam at tiny size (256 px unless `config` says otherwise), seeded."""
    torch.manual_seed(seed)
    return build_sam(config or get_tiny_config())


def get_torch_em_checkpoint(sam_state: Dict[str, torch.Tensor], decoder_state: Optional[Dict] = None,
                            prefix: str = "module.sam.") -> dict:
    """The dict torch-em's trainer saves for micro-sam models (DDP-wrapped by default).

    Like torch-em, it pickles live objects into `init` (a module, a dataset, numpy arrays), which
    torch's weights_only loader refuses; `write_torch_em_trainer_checkpoint` runs the real trainer.
    """
    checkpoint = {
        "iteration": 100, "epoch": 2, "best_epoch": 1, "best_metric": 0.25, "current_metric": 0.3,
        "model_state": OrderedDict((prefix + key, value) for key, value in sam_state.items()),
        "optimizer_state": {"state": {}, "param_groups": [{"lr": 1e-5, "params": [0, 1]}]},
        "init": {"model_class": "micro_sam.training.trainable_sam.TrainableSAM",
                 "model_kwargs": {"encoder": torch.nn.Linear(2, 2)},
                 "train_dataset": torch.utils.data.TensorDataset(torch.zeros(2, 3)),
                 "patch_shape": np.array([256, 256])},
    }
    if decoder_state is not None:
        checkpoint["decoder_state"] = OrderedDict(("module." + key, value)
                                                  for key, value in decoder_state.items())
    return checkpoint


class RunsCommandWhenUnpickled:
    """A pickle payload: unpickling it runs `touch marker` through `os.system`."""

    def __init__(self, marker: Path) -> None:
        self.marker = Path(marker)

    def __reduce__(self):
        return (os.system, (f"touch '{self.marker}'",))


def write_torch_em_trainer_checkpoint(folder: Path, sam, extra_init: Dict[str, Any]) -> Path:
    """`best.pt` of one iteration of torch-em's real `DefaultTrainer` on `sam` (wrapped like micro-sam's
    TrainableSAM, keys `sam.*`), with a TensorDataset of numpy images and kornia augmentations, then
    saved again by the trainer with `extra_init` added to its `init`."""
    from torch_em.data import TensorDataset
    from torch_em.loss import DiceLoss
    from torch_em.trainer import DefaultTrainer
    from torch_em.transform import get_augmentations

    class TrainableSam(torch.nn.Module):
        def __init__(self, sam) -> None:
            super().__init__()
            self.sam = sam
            self.init_kwargs = {"sam": sam}  # what torch-em pickles as model_kwargs

        def forward(self, x):
            features = self.sam.image_encoder(x.expand(-1, 3, -1, -1)).mean(dim=1, keepdim=True)
            return torch.nn.functional.interpolate(features, x.shape[-2:])

    size = sam.image_encoder.img_size
    images = [np.random.default_rng(i).random((size, size), dtype=np.float32) for i in range(2)]
    loader = torch.utils.data.DataLoader(
        TensorDataset(images, images, patch_shape=(size, size), transform=get_augmentations(ndim=2)), batch_size=1)
    loader.shuffle = True  # torch-em's serializer reads it
    model = TrainableSam(sam)
    trainer = DefaultTrainer(name="tiny", train_loader=loader, val_loader=loader, model=model, loss=DiceLoss(),
                             metric=DiceLoss(), optimizer=torch.optim.Adam(model.parameters(), 1e-5), device="cpu",
                             mixed_precision=False, compile_model=False, logger=None, save_root=str(folder))
    trainer.fit(iterations=1)
    trainer.save_checkpoint("best", 0.3, 0.3, init=extra_init)
    return Path(trainer.checkpoint_folder) / "best.pt"


def get_unetr_decoder_state(seed: int = 0) -> Dict[str, torch.Tensor]:
    """A few tensors under the key names of micro-sam's 2D UNETR decoder (shapes do not matter here)."""
    generator = torch.Generator().manual_seed(seed)
    names = ["base.blocks.0.weight", "decoder.blocks.0.block.0.weight", "deconv1.block.0.weight",
             "out_conv.weight", "out_conv.bias"]
    return OrderedDict((name, torch.randn(4, 3, generator=generator)) for name in names)


def get_sam_med2d_state(sam) -> Dict[str, torch.Tensor]:
    """A SAM state dict with SAM-Med2D-style adapters in every encoder block."""
    state = dict(sam.state_dict())
    dim = sam.image_encoder.patch_embed.proj.out_channels
    for i in range(len(sam.image_encoder.blocks)):
        prefix = f"image_encoder.blocks.{i}.Adapter."
        state[prefix + "channel.0.weight"] = torch.zeros(dim // 4, dim)
        state[prefix + "channel.2.weight"] = torch.zeros(dim, dim // 4)
        state[prefix + "spatial.0.weight"] = torch.zeros(1, 2, 7, 7)
        state[prefix + "spatial.2.weight"] = torch.zeros(1, 1, 7, 7)
    return state


@torch.no_grad()
def get_mask_decoder_outputs(sam, seed: int = 0):
    """(masks, iou) of the prompt encoder + mask decoder for a fixed point on a fixed random embedding."""
    generator = torch.Generator().manual_seed(seed)
    height, width = sam.prompt_encoder.image_embedding_size
    embedding = torch.randn(1, sam.prompt_encoder.embed_dim, height, width, generator=generator)
    points = (torch.tensor([[[10.0, 20.0], [40.0, 30.0]]]), torch.tensor([[1, 0]]))
    sparse, dense = sam.prompt_encoder(points=points, boxes=None, masks=None)
    return sam.mask_decoder(image_embeddings=embedding, image_pe=sam.prompt_encoder.get_dense_pe(),
                            sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
                            multimask_output=True)


def assert_same_state(a: Dict[str, torch.Tensor], b: Dict[str, torch.Tensor]) -> None:
    """Same keys, bit-identical tensors."""
    assert set(a) == set(b)
    for key in a:
        assert torch.equal(a[key].cpu(), b[key].cpu()), key
