"""The ε-prediction UNet: ε_θ(x_t, t[, context]) with the same shape as x_t.

    conv_in → DownSamplingBlock × L (skips saved) → BottleNeck → UpSamplingBlock × L (skips concatenated)
            → GroupNorm → SiLU → conv_out

For MNIST with ``down_sample=(True, True, False)``: 28×28 → 14×14 → 7×7 → 7×7 and back.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass

import torch
from torch import nn

from models.attention import MultiHeadCrossAttention, MultiHeadSelfAttention
from models.blocks import BottleNeck, DownSamplingBlock, ResidualBlock, UpSamplingBlock
from models.config_dict import DictConfig, check_field_names
from models.label_embedding import LabelEmbedding
from models.time_embedding import TimeEmbedding

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class UNetConfig(DictConfig):
    """Architecture of :class:`UNet`. Stored in every checkpoint, so a checkpoint rebuilds its model.

    Attributes:
        im_channels: channels of the images (1 for MNIST).
        image_size: side of the (square) images the model was trained on, which sampling draws; ``None`` until
            the trainer sets it from the dataset (sampling then draws 28). Divisible by 2^(number of down-samples).
        channels: widths; ``channels[0]`` after ``conv_in``, ``channels[i+1]`` after down level ``i``.
        down_sample: per level (``len(channels) - 1`` entries), whether that level halves H and W.
        attn: per level, whether its down and up blocks have (self-, and with a context cross-) attention.
        layers_per_block: residual layers in each down and up block.
        mid_layers: attention + residual layers in the bottleneck (after its first residual layer).
        mid_attn: whether the bottleneck has attention.
        time_emb_dim: width of the sinusoidal time embedding and its MLP (even).
        context_dim: width of the cross-attention context tokens; ``None`` for an unconditional model.
        num_classes: for a class-conditional model, the number of classes; labels become ``label_tokens``
            context tokens of width ``context_dim`` (which must then be set), plus a learned null label.
        label_tokens: context tokens per label.
        zero_init: start the last layer of every residual branch and of the network at zero, as Ho et al.'s code
            does (``init_scale=0``): every block starts as the identity and ε_θ at 0. ``False``: PyTorch's init.
    """

    im_channels: int = 1
    image_size: int | None = None
    channels: tuple[int, ...] = (32, 64, 128, 256)
    down_sample: tuple[bool, ...] = (True, True, False)
    attn: tuple[bool, ...] = (True, True, True)
    layers_per_block: int = 2
    mid_layers: int = 2
    mid_attn: bool = True
    num_heads: int = 4
    time_emb_dim: int = 128
    norm_groups: int = 8
    context_dim: int | None = None
    num_classes: int | None = None
    label_tokens: int = 1
    zero_init: bool = True

    def __post_init__(self) -> None:
        # JSON round trips give lists; keep tuples so configs compare and hash.
        for name in ("channels", "down_sample", "attn"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        self.validate()

    def validate(self) -> None:
        def bad(field: str, why: str) -> ValueError:
            return ValueError(f"UNetConfig.{field}: {why} (got {getattr(self, field)!r})")

        def positive_int(value) -> bool:
            return isinstance(value, int) and not isinstance(value, bool) and value >= 1

        for name in ("im_channels", "layers_per_block", "mid_layers", "num_heads", "time_emb_dim", "norm_groups",
                     "label_tokens"):
            if not positive_int(getattr(self, name)):
                raise bad(name, "must be a positive int")
        for name in ("image_size", "context_dim", "num_classes"):
            if getattr(self, name) is not None and not positive_int(getattr(self, name)):
                raise bad(name, "must be None or a positive int")
        if len(self.channels) < 2 or any(not isinstance(c, int) or c < 1 for c in self.channels):
            raise bad("channels", "needs at least two positive widths (conv_in width, then one per level)")
        levels = len(self.channels) - 1
        for name in ("down_sample", "attn"):
            if len(getattr(self, name)) != levels:
                raise bad(name, f"needs one entry per level, i.e. len(channels) - 1 = {levels}")
        if self.time_emb_dim % 2:
            raise bad("time_emb_dim", "must be even (half sine, half cosine)")
        if any(c % self.norm_groups for c in self.channels):
            raise bad("norm_groups", f"must divide every width in channels={self.channels}")
        attn_widths = [c for c, a in zip(self.channels, self.attn) if a] + [
            c for c, a in zip(self.channels[1:], self.attn) if a
        ] + ([self.channels[-1]] if self.mid_attn else [])
        if any(c % self.num_heads for c in attn_widths):
            raise bad("num_heads", f"must divide the width of every level with attention ({sorted(set(attn_widths))})")
        if self.context_dim is not None and not (any(self.attn) or self.mid_attn):
            raise bad("context_dim", "cross-attention needs at least one level with attention")
        if self.num_classes is not None and self.context_dim is None:
            raise bad("num_classes", "a class-conditional model needs context_dim for its label tokens")
        factor = 2 ** sum(bool(d) for d in self.down_sample)
        if self.image_size is not None and self.image_size % factor:
            raise bad("image_size", f"must be divisible by {factor}: the model halves H and W "
                                    f"{factor.bit_length() - 1} times (resize the images with --image-size)")
        if not isinstance(self.zero_init, bool):
            raise bad("zero_init", "must be True or False")

    @property
    def conditional(self) -> bool:
        """Whether the model is class-conditional (takes labels through :meth:`UNet.label_context`)."""
        return self.num_classes is not None


PRESETS: dict[str, UNetConfig] = {
    # For tests: trains in seconds.
    "tiny": UNetConfig(channels=(8, 16, 16), down_sample=(True, True), attn=(False, False), layers_per_block=1,
                       mid_layers=1, num_heads=2, time_emb_dim=16, norm_groups=4),
    # CPU default. A convolution's cost per parameter grows with the pixels it slides over, so the channels stay
    # narrow at 28×28 and 14×14, and the width, two residual levels and all attention sit at 7×7.
    "small": UNetConfig(channels=(16, 16, 64, 64), down_sample=(True, True, False), attn=(False, False, True),
                        layers_per_block=1, mid_layers=1, num_heads=4, time_emb_dim=64, norm_groups=8),
    # `small` with 80 channels at 7×7, for the shipped weights.
    "medium": UNetConfig(channels=(16, 16, 80, 80), down_sample=(True, True, False), attn=(False, False, True),
                         layers_per_block=1, mid_layers=1, num_heads=4, time_emb_dim=64, norm_groups=8),
    # The seed repository's size, for a GPU.
    "base": UNetConfig(),
}


class UNet(nn.Module):
    """ε_θ(x_t, t, context=None) → tensor shaped like ``x_t``."""

    def __init__(self, config: UNetConfig | None = None) -> None:
        super().__init__()
        self.config = config = config if config is not None else UNetConfig()
        ch, groups, heads, ctx = config.channels, config.norm_groups, config.num_heads, config.context_dim
        t_dim = config.time_emb_dim
        levels = len(ch) - 1

        self.time_embedding = TimeEmbedding(t_dim)
        self.conv_in = nn.Conv2d(config.im_channels, ch[0], 3, padding=1)
        self.downs = nn.ModuleList(
            DownSamplingBlock(ch[i], ch[i + 1], t_dim, config.down_sample[i], config.layers_per_block,
                              config.attn[i], heads, groups, ctx)
            for i in range(levels)
        )
        self.mid = BottleNeck(ch[-1], ch[-1], t_dim, config.mid_layers, heads, groups, ctx, config.mid_attn)
        # Up level i takes the level below (width ch[i+1]) and the skip saved at down level i's input (ch[i]).
        self.ups = nn.ModuleList(
            UpSamplingBlock(ch[i + 1], ch[i], ch[i], t_dim, config.down_sample[i], config.layers_per_block,
                            config.attn[i], heads, groups, ctx)
            for i in reversed(range(levels))
        )
        self.label_embedding = (LabelEmbedding(config.num_classes, ctx, config.label_tokens)
                                if config.conditional else None)
        self.norm_out = nn.GroupNorm(groups, ch[0])
        self.conv_out = nn.Conv2d(ch[0], config.im_channels, 3, padding=1)
        if config.zero_init:
            self._zero_init_branch_outputs()
        logger.info("UNet: %s parameters, config %s", f"{self.num_parameters():,}", config)

    def _zero_init_branch_outputs(self) -> None:
        """Zero the last layer of every residual branch (so ``x + branch(x) = x``) and of the network."""
        last_layers = [self.conv_out]
        for module in self.modules():
            if isinstance(module, ResidualBlock):
                last_layers.append(module.block2[-1])
            elif isinstance(module, (MultiHeadSelfAttention, MultiHeadCrossAttention)):
                last_layers.append(module.proj)
        for layer in last_layers:
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    @classmethod
    def from_preset(cls, name: str, **overrides) -> UNet:
        """Build a named preset (``tiny``, ``small``, ``medium``, ``base``), optionally overriding its fields."""
        return cls(preset_config(name, **overrides))

    def label_context(self, labels: torch.Tensor) -> torch.Tensor:
        """Context tokens ``[B, label_tokens, context_dim]`` for class labels ``[B]`` (``num_classes`` = null)."""
        if self.label_embedding is None:
            raise ValueError("this UNet is not class-conditional (num_classes=None); it cannot take labels")
        return self.label_embedding(labels)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def forward(self, x: torch.Tensor, t: torch.Tensor | int, context: torch.Tensor | None = None) -> torch.Tensor:
        """ε_θ ``[B, C, H, W]`` of x_t ``[B, C, H, W]`` at timesteps ``t [B]`` (or one int), cross-attending to
        ``context [B, M, context_dim]`` (required iff ``context_dim`` is set)."""
        if x.dim() != 4 or x.shape[1] != self.config.im_channels:
            raise ValueError(f"expected x of shape [B, {self.config.im_channels}, H, W], got {tuple(x.shape)}")
        if self.config.context_dim is None and context is not None:
            raise ValueError("this UNet is unconditional (context_dim=None) but a context was passed")
        if self.config.context_dim is not None and context is None:
            raise ValueError(f"this UNet is conditional (context_dim={self.config.context_dim}); pass a context")
        if not torch.is_tensor(t):
            t = torch.tensor(t, device=x.device)
        if t.dim() == 0:
            t = t.expand(x.shape[0])
        if t.shape != (x.shape[0],):
            raise ValueError(f"t must be an int or a [B={x.shape[0]}] tensor, got shape {tuple(t.shape)}")

        t_emb = self.time_embedding(t.to(x.device))  # (B, t_dim)
        h = self.conv_in(x)  # (B, ch[0], H, W)
        skips = []
        for down in self.downs:
            skips.append(h)
            h = down(h, t_emb, context)
        h = self.mid(h, t_emb, context)
        for up in self.ups:
            h = up(h, skips.pop(), t_emb, context)
        return self.conv_out(torch.nn.functional.silu(self.norm_out(h)))


def preset_config(name: str, **overrides) -> UNetConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; choose one of {sorted(PRESETS)}")
    check_field_names(UNetConfig, overrides)
    return dataclasses.replace(PRESETS[name], **overrides)
