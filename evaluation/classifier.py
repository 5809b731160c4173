"""A small MNIST CNN whose penultimate layer is the feature space of the classifier-FID (README, "Metrics"):

    x ∈ [0, 1], (B, 1, 28, 28) → normalise (MNIST mean/std)
      → [conv3×3 → ReLU → maxpool2] × 3       28 → 14 → 7 → 3
      → flatten → linear → φ(x) ∈ R^feature_dim   (the FID features, taken *before* the ReLU)
      → ReLU → dropout → linear → 10 logits

The weights (``checkpoints/mnist_classifier.pth``, from ``scripts/train_mnist_classifier.py``) are checked
against their sha256 sidecar on every load, so a metric is never computed with other weights.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from dataset.paths import REPO_ROOT
from models.config_dict import DictConfig

logger = logging.getLogger(__name__)

CLASSIFIER_FORMAT = "mnist-classifier/1"
DEFAULT_CLASSIFIER_PATH = REPO_ROOT / "checkpoints" / "mnist_classifier.pth"
TRAIN_COMMAND = "python scripts/train_mnist_classifier.py"

MNIST_MEAN, MNIST_STD = 0.1307, 0.3081  # pixel statistics of MNIST train on the [0, 1] scale


@dataclass(frozen=True)
class ClassifierConfig(DictConfig):
    """Architecture of :class:`MNISTClassifier`; stored in its checkpoint."""

    channels: tuple[int, ...] = (16, 32, 64)  # one conv + 2×2 max-pool per entry: 28 → 14 → 7 → 3
    feature_dim: int = 128  # width of φ(x), the FID feature space
    num_classes: int = 10
    dropout: float = 0.3
    image_size: int = 28

    def __post_init__(self) -> None:
        object.__setattr__(self, "channels", tuple(self.channels))  # a checkpoint's config holds a list


class MNISTClassifier(nn.Module):
    """p(y | x) for MNIST digits, with access to the penultimate features φ(x)."""

    def __init__(self, config: ClassifierConfig | None = None) -> None:
        super().__init__()
        self.config = config = config if config is not None else ClassifierConfig()
        layers: list[nn.Module] = []
        in_ch, size = 1, config.image_size
        for ch in config.channels:
            layers += [nn.Conv2d(in_ch, ch, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2)]
            in_ch, size = ch, size // 2
        self.conv = nn.Sequential(*layers)
        self.fc_features = nn.Linear(in_ch * size * size, config.feature_dim)
        self.dropout = nn.Dropout(config.dropout)
        self.fc_logits = nn.Linear(config.feature_dim, config.num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """φ(x): ``[B, 1, 28, 28]`` images in [0, 1] → ``[B, feature_dim]`` (pre-activation, so roughly Gaussian)."""
        size = self.config.image_size
        if x.dim() != 4 or x.shape[1:] != (1, size, size):
            raise ValueError(f"expected images of shape [B, 1, {size}, {size}] in [0, 1], got {tuple(x.shape)}")
        h = self.conv((x - MNIST_MEAN) / MNIST_STD)  # (B, C, 3, 3)
        return self.fc_features(h.flatten(1))  # (B, feature_dim)

    def logits_from_features(self, phi: torch.Tensor) -> torch.Tensor:
        return self.fc_logits(self.dropout(torch.relu(phi)))  # (B, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, num_classes]`` for images ``[B, 1, 28, 28]`` in [0, 1]."""
        return self.logits_from_features(self.features(x))


# ---------------------------------------------------------------------------------------- checkpoint I/O
def file_sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def sha256_sidecar(path: str | Path) -> Path:
    """``checkpoints/mnist_classifier.pth`` → ``checkpoints/mnist_classifier.sha256``."""
    return Path(path).with_suffix(".sha256")


def save_classifier(path: str | Path, model: MNISTClassifier, **metadata) -> str:
    """Write a ``weights_only``-loadable checkpoint and its ``sha256sum``-format sidecar; return the digest.

    ``metadata`` (e.g. ``test_accuracy``, ``seed``) must hold plain Python values, as ``weights_only`` loads.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {
        "format": CLASSIFIER_FORMAT,
        "config": model.config.to_dict(),
        "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        **metadata,
    }
    torch.save(state, path)
    digest = file_sha256(path)
    sha256_sidecar(path).write_text(f"{digest}  {path.name}\n")
    return digest


def load_classifier(path: str | Path = DEFAULT_CLASSIFIER_PATH) -> tuple[MNISTClassifier, dict]:
    """Load the classifier (CPU, eval mode) after checking its sha256 against the sidecar file.

    Returns ``(model, metadata)``; ``metadata`` holds everything in the checkpoint but the weights, plus
    ``path`` and ``sha256``.
    """
    path, sidecar = Path(path), sha256_sidecar(path)
    if not path.is_file():
        raise FileNotFoundError(f"classifier weights {path} not found; train them with `{TRAIN_COMMAND}`")
    if not sidecar.is_file():
        raise FileNotFoundError(f"no checksum file {sidecar} next to the classifier {path}: the metrics only use "
                                f"verified weights; retrain with `{TRAIN_COMMAND}` (it writes both files)")
    digest, expected = file_sha256(path), sidecar.read_text().partition(" ")[0].strip().lower()
    if digest != expected:
        raise ValueError(f"sha256 mismatch for {path}: file is {digest}, {sidecar} says {expected!r}; restore the "
                         f"weights (git checkout {path.name}) or retrain with `{TRAIN_COMMAND}`")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or state.get("format") != CLASSIFIER_FORMAT:
        raise ValueError(f"{path} is not a {CLASSIFIER_FORMAT} checkpoint")
    model = MNISTClassifier(ClassifierConfig.from_dict(state["config"]))
    model.load_state_dict(state["state_dict"])
    model.eval()
    metadata = {k: v for k, v in state.items() if k != "state_dict"}
    metadata.update(path=str(path), sha256=digest)
    logger.info("classifier %s (sha256 %s…, test accuracy %s)", path, digest[:12], metadata.get("test_accuracy"))
    return model, metadata


@torch.inference_mode()
def classify_uint8(model: MNISTClassifier, images: torch.Tensor,
                   batch_size: int = 1000) -> tuple[torch.Tensor, torch.Tensor]:
    """φ(x) and p(y|x) for uint8 images ``[N, 28, 28]`` (or ``[N, 1, 28, 28]``), batched.

    Returns float64 CPU tensors ``(features [N, feature_dim], probs [N, num_classes])``.
    """
    if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8:
        got = f"a {type(images).__name__}" if not isinstance(images, torch.Tensor) else f"dtype {images.dtype}"
        raise ValueError(f"expected a uint8 torch.Tensor of images (0..255), got {got}; "
                         "numpy arrays go through torch.from_numpy")
    if model.training:
        raise ValueError("the classifier is in training mode (dropout on); call model.eval() first")
    if images.dim() == 3:
        images = images.unsqueeze(1)
    device = next(model.parameters()).device
    feats, probs = [], []
    for start in range(0, images.shape[0], batch_size):
        x = images[start:start + batch_size].to(device=device, dtype=torch.float32) / 255.0
        phi = model.features(x)
        feats.append(phi.double().cpu())
        probs.append(torch.softmax(model.logits_from_features(phi).double(), dim=1).cpu())
    return torch.cat(feats), torch.cat(probs)
