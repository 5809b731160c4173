"""The ε-prediction UNet and its parts."""

from models.attention import MultiHeadCrossAttention, MultiHeadSelfAttention
from models.blocks import BottleNeck, DownSamplingBlock, ResidualBlock, SpatialAttention, UpSamplingBlock
from models.label_embedding import LabelEmbedding
from models.time_embedding import TimeEmbedding, get_time_embedding
from models.unet import PRESETS, UNet, UNetConfig, preset_config
