"""Figures of every DDPM building block, the data and the diffusion process (``scripts/visualize_components.py``);
each function writes its PNGs into an output folder and returns their paths."""

from visualization.components import (
    block_figures,
    cross_attention_figures,
    self_attention_figures,
    time_embedding_figures,
    unet_io_figure,
)
from visualization.diffusion import forward_diffusion_figure, reverse_process_figure, schedule_curves_figure
from visualization.mnist import load_mnist_preview, mnist_grid_figure, mnist_label_hist_figure
