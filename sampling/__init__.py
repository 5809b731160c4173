"""Drawing images from a trained DDPM: the sampling loops and the files they write."""

from sampling.guidance import (
    DEFAULT_GUIDANCE_SCALE,
    guided_eps_fn,
    labels_in_rows,
    sample_model,
)
from sampling.images import (
    load_samples_npz,
    make_grid,
    save_grid_png,
    save_samples_npz,
    save_trajectory_gif,
    to_uint8,
)
from sampling.sampler import (
    DEFAULT_SAMPLER,
    DEFAULT_SAMPLER_STEPS,
    DEFAULT_STEPS,
    SAMPLERS,
    NonFiniteSamplesError,
    SamplerConfig,
    Trajectory,
    make_stepper,
    run_chain,
    sample_images,
)
