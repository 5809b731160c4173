"""Figures of every DDPM building block, the data and the diffusion process (``scripts/visualize_components.py``).

Each figure function takes its inputs explicitly, writes one or more PNGs into an output folder and
returns their paths; none touches global state (figures are made without ``pyplot``).
"""

from visualization.components import (
    block_figures,
    cross_attention_figures,
    self_attention_figures,
    time_embedding_figures,
    unet_io_figure,
)
from visualization.diffusion import (
    FORWARD_TIMESTEPS,
    forward_diffusion_figure,
    reverse_process_figure,
    schedule_curves_figure,
)
from visualization.mnist import MNISTPreview, load_mnist_preview, mnist_grid_figure, mnist_label_hist_figure

__all__ = [
    "FORWARD_TIMESTEPS",
    "MNISTPreview",
    "block_figures",
    "cross_attention_figures",
    "forward_diffusion_figure",
    "load_mnist_preview",
    "mnist_grid_figure",
    "mnist_label_hist_figure",
    "reverse_process_figure",
    "schedule_curves_figure",
    "self_attention_figures",
    "time_embedding_figures",
    "unet_io_figure",
]
