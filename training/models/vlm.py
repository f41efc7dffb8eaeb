"""LLaVA-style VLM: vision encoder (patch features) -> projector -> Hugging Face causal LM.

Shapes: B = batch rows, N = the batch's images, P = image patches, V = vision width, D = LM width,
L = sequence length.
"""

from __future__ import annotations

import re

import torch
from torch import nn
from torch.nn import functional as F
from transformers import GenerationConfig

from mmtrain.pipelines.conversations import IGNORE_INDEX, supervised_positions

PROJECTOR_PATTERN = re.compile(r"^mlp(\d+)x_gelu$")


def build_projector(kind: str, vision_width: int, lm_width: int, hidden_width: int = 0) -> nn.Module:
    """`linear`, or `mlp{N}x_gelu`: N linear layers with GELU between (LLaVA-1.5 uses mlp2x_gelu)."""
    if kind == "linear":
        return nn.Linear(vision_width, lm_width)
    match = PROJECTOR_PATTERN.match(kind)
    if not match or int(match.group(1)) < 1:
        raise ValueError(f"unknown projector {kind!r}: use 'linear' or 'mlp{{N}}x_gelu' (e.g. mlp2x_gelu)")
    depth, hidden = int(match.group(1)), hidden_width or lm_width
    layers: list[nn.Module] = [nn.Linear(vision_width, hidden if depth > 1 else lm_width)]
    for index in range(1, depth):
        layers += [nn.GELU(), nn.Linear(hidden, lm_width if index == depth - 1 else hidden)]
    return nn.Sequential(*layers)


class VisionLanguageModel(nn.Module):
    def __init__(self, vision: nn.Module, projector: nn.Module, lm: nn.Module, image_token_id: int):
        """`vision` maps images [B, C, H, W] to patch features [B, P, V] (models/vision_encoder.py)."""
        super().__init__()
        self.vision, self.projector, self.lm = vision, projector, lm
        self.image_token_id = image_token_id

    def no_weight_decay(self) -> set[str]:
        """The LM's token embeddings (a tied output head shares them): weight decay would pull rare
        tokens' embeddings towards zero. The vision tower declares its own."""
        embeddings = self.lm.get_input_embeddings().weight
        return {name for name, param in self.named_parameters() if param is embeddings}

    def image_features(self, images_NCHW: torch.Tensor) -> torch.Tensor:
        """Projected patch features: [N, P, D]."""
        return self.projector(self.vision(images_NCHW))

    def embed(self, images_NCHW: torch.Tensor, input_ids_BL: torch.Tensor) -> torch.Tensor:
        """Token embeddings with the images' features written over the image-token positions: the
        N images of the batch in row order, each image's P features over the next P image tokens
        (a row holds as many images as its <image> placeholders: none, one or several).
        The data stage guarantees the rows hold N x P image tokens (it drops rows whose truncation
        cut an image block); checking it here would make the host wait on the GPU."""
        embeds_BLD = self.lm.get_input_embeddings()(input_ids_BL)
        if images_NCHW.shape[0] == 0:
            # Text-only rows: the tower and projector still join the graph (with weight 0), so
            # DDP finds a gradient for each of their parameters, as LLaVA does for text-only batches.
            unused = self.image_features(images_NCHW.new_zeros((1, *images_NCHW.shape[1:])))
            return embeds_BLD + unused.sum().to(embeds_BLD.dtype) * 0
        features_NPD = self.image_features(images_NCHW).to(embeds_BLD.dtype)
        is_image_BL = input_ids_BL == self.image_token_id
        return embeds_BLD.masked_scatter(is_image_BL.unsqueeze(-1), features_NPD)

    def forward(
        self, images_NCHW, input_ids_BL, labels_BL, predicting_K=None, position_ids_BL=None, reduction: str = "mean"
    ):
        """Next-token loss over the supervised tokens (their mean, or with reduction="sum" their sum,
        which the trainer divides by the step's global token count), as the LM's own loss, but with
        logits only at `predicting_K`: the positions whose next token has a label in some row
        (contract.PREDICTING, made on the host at collation; computed here from host labels when not
        given). The image and prompt positions carry no label: full-vocabulary fp32 logits there
        would be computed, stored and thrown away.

        Rows are right-padded, so a causal LM needs no attention mask: no real token attends to a
        later pad. Packed rows (pipelines/packing.py) come with `position_ids_BL`, restarting at each
        sample; from them transformers masks attention to each sample's own tokens (reading one
        flag from the device to detect them)."""
        if predicting_K is None:
            predicting_K = torch.from_numpy(supervised_positions(labels_BL.cpu().numpy()))
        embeds = self.embed(images_NCHW, input_ids_BL)
        logits_BKV = self.lm(
            inputs_embeds=embeds,
            position_ids=position_ids_BL,
            use_cache=False,
            logits_to_keep=predicting_K.to(embeds.device),
        ).logits
        targets_BK = labels_BL[:, 1:].index_select(1, predicting_K.to(labels_BL.device))
        return F.cross_entropy(
            logits_BKV.flatten(0, 1).float(), targets_BK.flatten(), ignore_index=IGNORE_INDEX, reduction=reduction
        )

    @torch.no_grad()
    def generate(
        self, images_NCHW: torch.Tensor, prompts: list[list[int]], max_new_tokens: int, stop_ids: set[int], pad_id: int
    ) -> list[list[int]]:
        """Greedy answers for a batch: `images_NCHW` are the prompts' images in order (as many per
        prompt as its image blocks). Prompts of any lengths are left-padded (every row's last prompt
        token is then at the same place, where generation continues) and the LM's own `generate`
        decodes with its KV cache, taking positions from the attention mask. Each answer ends before
        its first stop token. The same tokens as generating each row alone, in one batched pass."""
        device = images_NCHW.device
        length = max(len(prompt) for prompt in prompts)
        ids_BL = torch.full((len(prompts), length), pad_id, dtype=torch.long)
        mask_BL = torch.zeros((len(prompts), length), dtype=torch.long)
        for row, prompt in enumerate(prompts):
            ids_BL[row, length - len(prompt) :] = torch.tensor(prompt)
            mask_BL[row, length - len(prompt) :] = 1
        ids_BL, mask_BL = ids_BL.to(device), mask_BL.to(device)
        config = GenerationConfig(
            max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=sorted(stop_ids), pad_token_id=pad_id
        )
        new_BN = self.lm.generate(
            inputs_embeds=self.embed(images_NCHW, ids_BL), attention_mask=mask_BL, generation_config=config
        )
        return [_until_stop(row, stop_ids) for row in new_BN.tolist()]


def _until_stop(token_ids: list[int], stop_ids: set[int]) -> list[int]:
    for end, token_id in enumerate(token_ids):
        if token_id in stop_ids:
            return token_ids[:end]
    return token_ids
