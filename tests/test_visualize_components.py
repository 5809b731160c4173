"""scripts/visualize_components.py: every figure is written as a valid, non-blank PNG; the CLI rejects bad
input with messages that say what is valid; figures are deterministic and leave global RNG state alone."""

from __future__ import annotations

import importlib.util
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from common.checkpoint import FORMAT, save_checkpoint
from models import UNet

REPO_ROOT = Path(__file__).resolve().parent.parent
SCRIPT = REPO_ROOT / "scripts" / "visualize_components.py"

COMPONENT_FIGURES = [
    "time_embedding_heatmap.png", "time_embedding_first64.png", "mhsa_head0.png", "mhsa_head1.png",
    "mhca_head0.png", "mhca_head1.png", "downsample_block_channel0.png", "bottleneck_block_channel0.png",
    "upsample_block_channel0.png", "unet_io.png",
]
DATA_FIGURES = ["mnist_grid.png", "mnist_label_hist.png", "forward_diffusion.png", "schedule_curves.png"]
ALL_FIGURES = COMPONENT_FIGURES + DATA_FIGURES + ["reverse_process.png"]


def load_script():
    spec = importlib.util.spec_from_file_location("visualize_components", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def script():
    return load_script()


def assert_valid_png(path: Path, min_std: float = 5.0) -> None:
    """The file is a PNG that decodes, and it is not blank: its gray levels vary (std on a 0–255 scale)."""
    assert path.is_file(), f"{path.name} was not written"
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", f"{path.name} is not a PNG"
    with Image.open(path) as img:
        img.verify()
    with Image.open(path) as img:
        assert img.width >= 200 and img.height >= 150, f"{path.name} is only {img.size}"
        gray = np.asarray(img.convert("L"), dtype=np.float64)
    assert gray.std() > min_std, f"{path.name} looks blank (gray std {gray.std():.2f})"


def make_digit_tree(root: Path, per_class: int = 3) -> Path:
    """root/<digit>/<i>.png for digits 0–3: 28×28 squares of varying brightness and size."""
    rng = np.random.default_rng(0)
    for digit in range(4):
        for i in range(per_class + digit):  # unequal class sizes, so the histogram has something to show
            pixels = np.zeros((28, 28), dtype=np.uint8)
            lo, hi = 4 + digit, 24 - i
            pixels[lo:hi, lo:hi] = rng.integers(100, 256)
            (root / str(digit)).mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels).save(root / str(digit) / f"{i}.png")
    return root


def make_tiny_checkpoint(path: Path, num_timesteps: int = 12, **overrides) -> Path:
    """An untrained ``tiny`` UNet with a short schedule, in the trainer's checkpoint format."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = UNet.from_preset("tiny", **overrides)
    save_checkpoint(path, {
        "format": FORMAT, "model_config": model.config.to_dict(),
        "diffusion_config": {"num_timesteps": num_timesteps, "beta_start": 1e-4, "beta_end": 0.02},
        "train_config": {}, "model": model.state_dict(), "ema": None, "step": 0, "epoch": 0,
    })
    return path


def test_main_writes_every_figure(script, tmp_path):
    """The whole script in-process: a tiny class-folder tree for the MNIST figures and a tiny checkpoint
    (T = 12) for the reverse process, so it runs in seconds."""
    tree = make_digit_tree(tmp_path / "digits")
    ckpt = make_tiny_checkpoint(tmp_path / "tiny.pth")
    out = tmp_path / "figures"
    rng_before, threads_before = torch.random.get_rng_state(), torch.get_num_threads()

    assert script.main(["--device", "cpu", "--outdir", str(out), "--mnist-root", str(tree),
                        "--ckpt-file", str(ckpt), "--num-samples", "2"]) == 0

    assert sorted(p.name for p in out.iterdir()) == sorted(ALL_FIGURES)
    for name in ALL_FIGURES:
        assert_valid_png(out / name)
    assert torch.equal(torch.random.get_rng_state(), rng_before), "the script changed the global RNG state"
    assert torch.get_num_threads() == threads_before, "the script did not restore torch's thread count"


def test_reverse_process_of_a_class_conditional_checkpoint(script, tmp_path):
    ckpt = make_tiny_checkpoint(tmp_path / "cond.pth", num_timesteps=4, num_classes=10, context_dim=16)
    skip = [name for name in script.GROUPS if name != "reverse"]
    assert script.main(["--outdir", str(tmp_path), "--ckpt-file", str(ckpt), "--num-samples", "2",
                        "--skip", *skip]) == 0
    assert_valid_png(tmp_path / "reverse_process.png")


def test_skip_leaves_figures_out_and_missing_default_checkpoint_is_logged(script, tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(script, "DEFAULT_CKPT", tmp_path / "no_such.pth")
    skip = [name for name in script.GROUPS if name not in ("schedule", "reverse")]
    with caplog.at_level(logging.INFO):
        assert script.main(["--outdir", str(tmp_path), "--skip", *skip]) == 0
    assert [p.name for p in tmp_path.iterdir() if p.suffix == ".png"] == ["schedule_curves.png"]
    assert "skipping reverse_process.png: no checkpoint" in caplog.text


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--skip", "time", "attention"], "unknown --skip name(s) attention; valid names are: time, mhsa"),
        (["--ckpt-file", "no/such/file.pth"], "--ckpt-file no/such/file.pth does not exist"),
        (["--mnist-root", "no/such/folder"], "--mnist-root no/such/folder is not a folder"),
        (["--device", "tpu"], "argument --device: invalid choice: 'tpu'"),
        (["--num-samples", "0"], "--num-samples must be at least 1"),
        (["--num-threads", "-1"], "--num-threads must be 0 (torch's default) or more"),
    ],
)
def test_bad_arguments_are_rejected(script, capsys, argv, message):
    with pytest.raises(SystemExit) as exc:
        script.parse_args(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error shown when CUDA is absent")
def test_cuda_without_a_gpu_is_a_clear_error(script, capsys):
    with pytest.raises(SystemExit):
        script.parse_args(["--device", "cuda"])
    assert "CUDA is not available" in capsys.readouterr().err


def test_help_lists_every_figure(script, capsys):
    with pytest.raises(SystemExit) as exc:
        script.parse_args(["--help"])
    assert exc.value.code == 0
    shown = capsys.readouterr().out
    for name in ALL_FIGURES:
        assert name in shown, f"--help does not mention {name}"


def test_bad_skip_in_a_subprocess():
    """As a user runs it: from another folder, so the script must find the repository's packages itself."""
    bad = subprocess.run([sys.executable, str(SCRIPT), "--skip", "nope"], capture_output=True, text=True, cwd="/")
    assert bad.returncode == 2
    assert "usage: visualize_components.py" in bad.stderr
    assert "valid names are: time, mhsa, mhca, down, bottleneck, upsample, unet, mnist" in bad.stderr


def test_figures_are_deterministic(tmp_path):
    from visualization import cross_attention_figures

    def draw(folder: str, seed: int) -> list[bytes]:
        return [p.read_bytes() for p in cross_attention_figures(tmp_path / folder, seed=seed, heads=(0,))]

    first, second, other = draw("a", 3), draw("b", 3), draw("c", 4)
    assert first == second
    assert first != other


def test_mnist_preview_from_the_bundled_idx_files():
    from visualization import load_mnist_preview

    preview = load_mnist_preview(None, per_class=2)  # None: data/MNIST/raw
    assert preview.images.shape == (10, 2, 28, 28)
    assert 0.0 <= preview.images.min() and preview.images.max() <= 1.0
    assert sum(preview.counts.values()) == 60000 and preview.counts["1"] == 6742
    assert preview.first_image("7").shape == (28, 28)


def test_mnist_preview_pads_short_classes_with_nan(tmp_path):
    from visualization import load_mnist_preview

    preview = load_mnist_preview(make_digit_tree(tmp_path, per_class=1), per_class=3)
    assert preview.class_names == ["0", "1", "2", "3"]
    assert preview.counts == {"0": 1, "1": 2, "2": 3, "3": 4}
    assert np.isnan(preview.images[0, 1:]).all() and not np.isnan(preview.images[2]).any()


def test_a_block_figure_does_not_depend_on_which_other_blocks_are_drawn(tmp_path):
    from visualization import block_figures

    (alone,) = block_figures(tmp_path / "a", which=("bottleneck",))
    _, with_down = block_figures(tmp_path / "b", which=("down", "bottleneck"))
    assert alone.name == with_down.name == "bottleneck_block_channel0.png"
    assert alone.read_bytes() == with_down.read_bytes()
