"""Region-Embedder Module (REM): the part ReferDiffusion adds to InstructPix2Pix.

Inputs (per sample):
- F_P, the prompt embedding: the CLIP text encoder's last hidden state, B x L x D;
- the source image latent: the same tensor the UNet receives as its image channels (the VAE latent
  *mode*, unscaled, as InstructPix2Pix uses it), B x C x h x w;
- the prompt's token attention mask, B x L (1 = real token incl. BOS/EOS, 0 = padding).

Image features F_s. The brief asks for features "from the VAE latent of the source, projected to the
text width". A single 1x1 convolution from 4 latent channels to D gives features of rank 4 at each
position, too weak to segment anything; so by default F_s = 1x1-conv(ConvBlocks(latent)): a few 3x3
convolution blocks (GroupNorm, SiLU, residual) at `image_hidden_channels` give each position some
spatial context, then a 1x1 convolution projects to width D. `image_conv_layers=0` gives exactly the
plain per-position projection (a 1x1 convolution 4 -> D). Convolutions see where a cell is only near the
picture's border, while referring expressions name places ("the leftmost", "second from the top");
`coordinates=True` adds each cell's position as two more input channels (CoordConv; off by default, as in
the paper's REM). The mask head compares each position with one vector pooled from the whole prompt; with
`image_text_layers=N`, N cross-attention blocks first let every image position read the prompt's tokens
(as referring-segmentation models fuse words and pixels), so F_s itself depends on the prompt. 0 (the
default) is the paper's REM. `image_self_attention=True` starts each of those blocks with self-attention
among the image positions, so that a position can compare itself with the whole picture ("the third from
the left", "the bottommost"), which convolutions and per-position cross-attention cannot.

Parts (names as in the paper):
- edit extractor: a self-attention block over F_P, masked mean pool, linear -> e_e (B x D);
- referring extractor: a self-attention block over F_P, masked mean pool -> F_er (B x D);
  mask head M^ = <F_s(p), MLP_m(F_er)> / sqrt(D) + b at each latent position p (B x h x w logits);
  vision embedding e_v = sum_p sigmoid(M^)(p) F_s(p) / sum_p sigmoid(M^)(p);
  referring embedding e_r = MLP_r(F_er);
- fusion: cross-attention with queries F_P and keys/values [F_P; e_v; e_r; e_e] (padding tokens
  masked out as keys); the condition is c = F_P + g * CrossAttn(...), with g a per-channel gate
  initialised to zero. A fresh REM therefore returns F_P bit for bit (F_P + 0 * x == F_P for finite x),
  so a new ReferDiffusion checkpoint made from InstructPix2Pix reproduces it exactly, while the gate
  still receives a gradient from the first step on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers import ConfigMixin, ModelMixin  # noqa: F401  (diffusers' loader looks ModelMixin up here)
from diffusers.configuration_utils import register_to_config
from diffusers.utils import BaseOutput
from torch import nn


@dataclass
class RegionEmbedderOutput(BaseOutput):
    """What the REM computes; `condition` goes to the UNet, the rest feeds the losses and the masks.

    The defaults are there so that the output can be rebuilt from a dict, as accelerate's mixed-precision
    wrapper and DDP rebuild a model's outputs (`BaseOutput` then fills the fields from the dict); the REM
    always sets every field."""

    condition: torch.Tensor | None = None  # c, B x L x D: the UNet's encoder_hidden_states
    mask_logits: torch.Tensor | None = None  # M^, B x h x w (logits at latent resolution)
    edit_embedding: torch.Tensor | None = None  # e_e, B x D
    referring_embedding: torch.Tensor | None = None  # e_r, B x D
    vision_embedding: torch.Tensor | None = None  # e_v, B x D
    referring_feature: torch.Tensor | None = None  # F_er, B x D


def upsample_mask_logits(logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """M^ (B x h x w logits) at image size H x W, bilinear: how the pipeline draws the mask and how
    L_mask at `mask_resolution="image"` sees it."""
    return F.interpolate(logits.float().unsqueeze(1), size=size, mode="bilinear", align_corners=False).squeeze(1)


def masked_mean(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean over dim 1 of B x L x D, counting only positions where mask (B x L) is 1."""
    if mask is None:
        return x.mean(dim=1)
    w = mask.to(x.dtype).unsqueeze(-1)
    return (x * w).sum(dim=1) / w.sum(dim=1).clamp_min(1.0)


class _Attention(nn.Module):
    """Multi-head attention with its own projections (scaled_dot_product_attention inside)."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"width {dim} is not divisible by {heads} attention heads")
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, query: torch.Tensor, context: torch.Tensor, key_mask: torch.Tensor | None) -> torch.Tensor:
        b, lq, d = query.shape
        lk = context.shape[1]
        h = self.heads

        def split(x: torch.Tensor, n: int) -> torch.Tensor:
            return x.view(b, n, h, d // h).transpose(1, 2)

        q, k, v = split(self.q(query), lq), split(self.k(context), lk), split(self.v(context), lk)
        attn_mask = None if key_mask is None else key_mask.bool()[:, None, None, :]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        return self.out(out.transpose(1, 2).reshape(b, lq, d))


class _SelfAttentionBlock(nn.Module):
    """Pre-norm transformer block: x + Attn(LN x), then + MLP(LN x)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = _Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        y = self.norm1(x)
        x = x + self.attn(y, y, mask)
        return x + self.mlp(self.norm2(x))


class _CrossAttentionBlock(nn.Module):
    """Pre-norm block in which image positions attend to the prompt's tokens: x + Attn(LN x, LN F_P),
    then + MLP(LN x); with `self_attention`, first x + Attn(LN x, LN x) among the image positions."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, self_attention: bool = False) -> None:
        super().__init__()
        if self_attention:
            self.norm_self = nn.LayerNorm(dim)
            self.self_attn = _Attention(dim, heads)
        self.norm_q = nn.LayerNorm(dim)
        self.norm_kv = nn.LayerNorm(dim)
        self.attn = _Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = _mlp(dim, mlp_ratio)

    def forward(self, x: torch.Tensor, text: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        if hasattr(self, "self_attn"):
            y = self.norm_self(x)
            x = x + self.self_attn(y, y, None)
        x = x + self.attn(self.norm_q(x), self.norm_kv(text), mask)
        return x + self.mlp(self.norm2(x))


def _mlp(dim: int, ratio: float) -> nn.Sequential:
    hidden = int(dim * ratio)
    return nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))


class _ConvBlock(nn.Module):
    """Residual 3x3 convolution block (GroupNorm, SiLU)."""

    def __init__(self, channels: int, groups: int) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(groups, channels)
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(F.silu(self.norm(x)))


def _groups(channels: int) -> int:
    for g in (32, 16, 8, 4, 2):
        if channels % g == 0:
            return g
    return 1


class RegionEmbedder(ModelMixin, ConfigMixin):
    """The Region-Embedder Module; see the module docstring for the computation."""

    config_name = "config.json"

    @register_to_config
    def __init__(
        self,
        text_dim: int = 768,
        latent_channels: int = 4,
        num_attention_heads: int = 8,
        mlp_ratio: float = 4.0,
        image_hidden_channels: int = 128,
        image_conv_layers: int = 2,
        coordinates: bool = False,
        coordinate_extent: float = 64.0,
        image_text_layers: int = 0,
        image_self_attention: bool = False,
    ) -> None:
        super().__init__()
        d = text_dim
        # F_s: latent (+ coordinates) -> (conv blocks) -> 1x1 conv to width D.
        in_channels = latent_channels + (2 if coordinates else 0)
        if image_conv_layers > 0:
            layers: list[nn.Module] = [nn.Conv2d(in_channels, image_hidden_channels, 3, padding=1)]
            layers += [_ConvBlock(image_hidden_channels, _groups(image_hidden_channels))
                       for _ in range(image_conv_layers)]
            layers += [nn.GroupNorm(_groups(image_hidden_channels), image_hidden_channels), nn.SiLU(),
                       nn.Conv2d(image_hidden_channels, d, 1)]
            self.image_proj = nn.Sequential(*layers)
        else:
            self.image_proj = nn.Sequential(nn.Conv2d(in_channels, d, 1))
        # image positions attending to the prompt before the mask head (none in the paper's REM)
        self.image_text_blocks = nn.ModuleList(
            [_CrossAttentionBlock(d, num_attention_heads, mlp_ratio, image_self_attention)
             for _ in range(image_text_layers)])
        self.edit_block = _SelfAttentionBlock(d, num_attention_heads, mlp_ratio)
        self.edit_out = nn.Linear(d, d)
        self.refer_block = _SelfAttentionBlock(d, num_attention_heads, mlp_ratio)
        self.mask_mlp = _mlp(d, mlp_ratio)
        self.mask_bias = nn.Parameter(torch.zeros(()))
        self.refer_mlp = _mlp(d, mlp_ratio)
        self.fusion_norm_q = nn.LayerNorm(d)
        self.fusion_norm_kv = nn.LayerNorm(d)
        self.fusion_attn = _Attention(d, num_attention_heads)
        # Zero gate: an untrained REM leaves F_P unchanged (see module docstring).
        self.gate = nn.Parameter(torch.zeros(d))

    def image_features(self, image_latents: torch.Tensor) -> torch.Tensor:
        """F_s, B x D x h x w."""
        x = image_latents.to(self.gate.dtype)
        if self.config.coordinates:
            x = torch.cat([x, self.coordinate_map(x)], dim=1)
        return self.image_proj(x)

    def coordinate_map(self, latents: torch.Tensor) -> torch.Tensor:
        """B x 2 x h x w: each latent cell's centre (x, y), counted in cells from the top-left corner and
        divided by `coordinate_extent`. Not normalised by the map's own size, so that a picture padded at
        its bottom and right (the trainer's `aspect` protocol) gives its cells the coordinates they have
        in the picture alone, as the pipeline sees it."""
        b, _, h, w = latents.shape
        extent = float(self.config.coordinate_extent)
        ys = (torch.arange(h, device=latents.device, dtype=latents.dtype) + 0.5) / extent
        xs = (torch.arange(w, device=latents.device, dtype=latents.dtype) + 0.5) / extent
        grid = torch.stack([xs.view(1, w).expand(h, w), ys.view(h, 1).expand(h, w)])
        return grid.unsqueeze(0).expand(b, -1, -1, -1)

    def forward(
        self,
        prompt_embeds: torch.Tensor,
        image_latents: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        return_dict: bool = True,
    ) -> RegionEmbedderOutput | tuple[torch.Tensor, ...]:
        """F_P (B x L x D), source latent (B x C x h x w), token mask (B x L) -> RegionEmbedderOutput."""
        if prompt_embeds.ndim != 3 or prompt_embeds.shape[-1] != self.config.text_dim:
            raise ValueError(f"prompt_embeds must be B x L x {self.config.text_dim}, got {tuple(prompt_embeds.shape)}")
        if image_latents.ndim != 4 or image_latents.shape[1] != self.config.latent_channels:
            raise ValueError(
                f"image_latents must be B x {self.config.latent_channels} x h x w, got {tuple(image_latents.shape)}"
            )
        if image_latents.shape[0] != prompt_embeds.shape[0]:
            raise ValueError("prompt_embeds and image_latents must have the same batch size")
        dtype = prompt_embeds.dtype
        x = prompt_embeds.to(self.gate.dtype)
        mask = None if attention_mask is None else attention_mask.to(x.device)

        e_e = self.edit_out(masked_mean(self.edit_block(x, mask), mask))
        f_er = masked_mean(self.refer_block(x, mask), mask)

        f_s = self.image_features(image_latents)  # B x D x h x w
        if len(self.image_text_blocks):
            b, d, h, w = f_s.shape
            tokens = f_s.flatten(2).transpose(1, 2)  # B x hw x D
            for block in self.image_text_blocks:
                tokens = block(tokens, x, mask)
            f_s = tokens.transpose(1, 2).reshape(b, d, h, w)
        kernel = self.mask_mlp(f_er)  # B x D
        logits = torch.einsum("bdhw,bd->bhw", f_s, kernel) / math.sqrt(f_s.shape[1]) + self.mask_bias
        weights = torch.sigmoid(logits).unsqueeze(1)  # B x 1 x h x w
        e_v = (f_s * weights).sum(dim=(2, 3)) / weights.sum(dim=(2, 3)).clamp_min(1e-6)
        e_r = self.refer_mlp(f_er)

        extra = torch.stack([e_v, e_r, e_e], dim=1)  # B x 3 x D
        context = self.fusion_norm_kv(torch.cat([x, extra], dim=1))
        key_mask = None
        if mask is not None:
            key_mask = torch.cat([mask.bool(), torch.ones(mask.shape[0], 3, dtype=torch.bool, device=mask.device)], 1)
        fused = self.fusion_attn(self.fusion_norm_q(x), context, key_mask)
        condition = (x + self.gate * fused).to(dtype)

        out = RegionEmbedderOutput(
            condition=condition,
            mask_logits=logits,
            edit_embedding=e_e,
            referring_embedding=e_r,
            vision_embedding=e_v,
            referring_feature=f_er,
        )
        return out if return_dict else out.to_tuple()
