"""The core's batched decoding (medicosam.decoding) equals SAM's public prompt encoder and mask decoder.

Real tiny SAM, embeddings of real MR slices (ICBM152 axial, zero-padded into the 256 px input).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medicosam.decoding import (
    MULTIMASK,
    decode_prompts,
    embed_prompts,
    get_heads_in_play,
    get_kept_output,
    get_prompt_tokens,
    predict_masks,
    uses_multimask,
)


@pytest.fixture(scope="module")
def embeddings(icbm152):
    """Image embeddings (2, C, h, w) of two axial slices under a seeded tiny SAM, and that SAM."""
    from medicosam.models.config import build_sam, get_tiny_config

    torch.manual_seed(0)
    sam = build_sam(get_tiny_config())
    images = torch.zeros(2, 3, 256, 256)
    for i, k in enumerate((45, 55)):
        h, w = icbm152["t1"][k].shape
        images[i, :, :h, :w] = torch.from_numpy(icbm152["t1"][k].astype(np.float32))
    with torch.no_grad():
        return sam, sam.image_encoder(sam.preprocess(images))


def test_batched_decoding_equals_sam_per_image(embeddings):
    """One decoder call for every object of every image == SAM's own prompt encoder + decoder per image."""
    sam, features = embeddings
    rng = np.random.default_rng(0)
    image_index = torch.tensor([0, 0, 1, 1, 1])
    n = len(image_index)
    # Objects 0, 2: a point + one correction pair; 1, 3, 4: a box + one correction pair.
    boxes = [None, np.array([10, 12, 90, 100.0]), None, np.array([5, 5, 60, 70.0]), np.array([30, 2, 99, 50.0])]
    points = [rng.uniform(0, 110, (3 if box is None else 2, 2)).astype(np.float32) for box in boxes]
    labels = [np.array([1, 1, 0]) if box is None else np.array([1, 0]) for box in boxes]
    coords, token_labels = get_prompt_tokens(points, labels, boxes)
    assert token_labels.shape == (n, 4) and (token_labels == -1).sum() == 2  # only SAM's own padding
    grid = sam.prompt_encoder.image_embedding_size[0]
    logits = torch.randn(n, 1, 4 * grid, 4 * grid)
    use_mask = torch.tensor([True, False, False, True, False])
    with torch.no_grad():
        sparse, dense = embed_prompts(sam.prompt_encoder, torch.from_numpy(coords), torch.from_numpy(token_labels),
                                      logits, use_mask)
        masks, ious = predict_masks(sam.mask_decoder, features[image_index], sam.prompt_encoder.get_dense_pe(),
                                    sparse, dense)
        for image in (0, 1):
            for i in torch.nonzero(image_index == image).flatten().tolist():
                has_box = boxes[i] is not None
                ref_sparse, ref_dense = sam.prompt_encoder(
                    points=(torch.from_numpy(points[i])[None], torch.from_numpy(labels[i])[None]),
                    boxes=torch.from_numpy(boxes[i]).float()[None] if has_box else None,
                    masks=logits[i:i + 1] if use_mask[i] else None)
                ref_masks, ref_ious = sam.mask_decoder.predict_masks(
                    features[image:image + 1], sam.prompt_encoder.get_dense_pe(), ref_sparse, ref_dense)
                torch.testing.assert_close(sparse[i:i + 1], ref_sparse, rtol=1e-5, atol=1e-5)
                torch.testing.assert_close(dense[i:i + 1], ref_dense, rtol=1e-5, atol=1e-5)
                torch.testing.assert_close(masks[i:i + 1], ref_masks, rtol=1e-4, atol=1e-4)
                torch.testing.assert_close(ious[i:i + 1], ref_ious, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("multimask", [False, True])
def test_kept_output_equals_sam_forward_on_one_image(embeddings, multimask):
    """Objects on one image (expanded embedding, all given a mask prompt): SAM's `MaskDecoder.forward` head."""
    sam, features = embeddings
    points = [np.array([[40.0, 50.0]], np.float32), np.array([[60.0, 30.0]], np.float32)]
    labels = [np.array([1]), np.array([1])]
    coords, token_labels = get_prompt_tokens(points, labels, [None, None])
    logits = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        low_res, iou = decode_prompts(sam, features[:1].expand(2, -1, -1, -1), torch.from_numpy(coords),
                                      torch.from_numpy(token_labels), logits)
        ref_sparse, ref_dense = sam.prompt_encoder(points=(torch.from_numpy(np.stack(points)),
                                                           torch.from_numpy(np.stack(labels))),
                                                   boxes=None, masks=logits)
        ref_masks, ref_iou = sam.mask_decoder(features[:1], sam.prompt_encoder.get_dense_pe(), ref_sparse,
                                              ref_dense, multimask_output=multimask)
    in_play = torch.from_numpy(get_heads_in_play(np.full(2, multimask), low_res.shape[1]))
    kept = get_kept_output(iou, in_play)
    rows = torch.arange(2)
    ref_kept = ref_iou.argmax(dim=1)
    assert kept.tolist() == (ref_kept + (1 if multimask else 0)).tolist()
    torch.testing.assert_close(low_res[rows, kept], ref_masks[rows, ref_kept], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(iou[rows, kept], ref_iou[rows, ref_kept], rtol=1e-4, atol=1e-4)


def test_multimask_rule_and_heads():
    assert uses_multimask(np.array([1]), has_box=False, has_mask=False)
    assert not uses_multimask(np.array([0]), has_box=False, has_mask=False)  # a lone negative point
    assert not uses_multimask(np.array([1, 0]), has_box=False, has_mask=False)
    assert not uses_multimask(np.array([1]), has_box=True, has_mask=False)
    assert not uses_multimask(np.array([1]), has_box=False, has_mask=True)
    assert not uses_multimask(np.zeros(0, np.int64), has_box=True, has_mask=False)
    heads = get_heads_in_play(np.array([True, False]), 4)
    assert heads.tolist() == [[False, True, True, True], [True, False, False, False]]
    assert list(range(4))[MULTIMASK] == [1, 2, 3]
    iou = torch.tensor([[0.9, 0.2, 0.7, 0.1], [0.1, 0.9, 0.8, 0.7]])
    assert get_kept_output(iou, torch.from_numpy(heads)).tolist() == [2, 0]  # never another head's output
