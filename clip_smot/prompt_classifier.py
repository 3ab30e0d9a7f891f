"""A learned prompt with its CLIP model: text features, image features and logits for images.

The Python API for using a prompt file::

    from clip_smot.prompt_classifier import load_prompt_model

    clf = load_prompt_model("runs/fit/prompt.safetensors", device="cuda")  # model named in the file
    logits = clf.logits(images)  # images: [B, 3, S, S] floats in [0, 1], S = clf.image_size
    cos = clf.cosine(images)     # the cosine similarities (MCM uses softmax(cos / tau))

When the model in use has the same weights as at training time, the stored text features are
used as they are; with other weights of the same architecture they are encoded again from the
stored context; another architecture is a UserError (``PromptFile.check_model``).
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F

from .clip_model import ClipModel, load_clip
from .prompt import text_features_from_prompt
from .prompt_file import PromptFile, load_prompt

__all__ = ["PromptClassifier", "load_prompt_model"]


class PromptClassifier:
    """Logits of a frozen CLIP model against the K class prompts of a prompt file.

    Args:
        clip: the loaded model (see :func:`clip_smot.clip_model.load_clip`).
        prompt: a loaded :class:`~clip_smot.prompt_file.PromptFile` or its path.

    Attributes:
        text_features: [K, e] normalised, float32, on the model's device.
        classnames: the K class names.
        image_size: the side length the model expects.
    """

    def __init__(self, clip: ClipModel, prompt: PromptFile | str | os.PathLike):
        self.clip = clip
        self.prompt = prompt if isinstance(prompt, PromptFile) else load_prompt(prompt)
        device = clip.model.logit_scale.device
        if self.prompt.check_model(clip.identity()):  # same weights: the stored features are exact
            tf = self.prompt.text_features
        else:
            tf = text_features_from_prompt(clip, self.prompt)
        self.text_features = F.normalize(tf.float(), dim=-1).to(device)  # [K, e]
        self.classnames = list(self.prompt.classnames)
        self.image_size = clip.image_size
        self._mean = torch.tensor(clip.mean, device=device).view(1, 3, 1, 1)
        self._std = torch.tensor(clip.std, device=device).view(1, 3, 1, 1)

    @torch.no_grad()
    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        """Normalised image features [B, e] (float32) of images [B, 3, S, S] in [0, 1]."""
        x = (images.to(self._mean.device).float() - self._mean) / self._std
        return F.normalize(self.clip.model.encode_image(x).float(), dim=-1)

    def cosine(self, images: torch.Tensor) -> torch.Tensor:
        """Cosine similarities [B, K] between the images and the class prompts."""
        return self.image_features(images) @ self.text_features.t()

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """CLIP logits [B, K]: ``logit_scale.exp() * cos(image, text)``."""
        return self.clip.model.logit_scale.exp().float() * self.cosine(images)


def load_prompt_model(
    prompt: str | os.PathLike,
    model: str | None = None,
    pretrained: str | None = None,
    device: torch.device | str = "cpu",
) -> PromptClassifier:
    """Load a prompt file and the CLIP model it names (or the one given) as a classifier.

    Args:
        prompt: a ``prompt.safetensors``.
        model, pretrained: override the model named in the file (a model-config JSON and a
            local checkpoint, for example); default: the file's ``model`` and ``pretrained``,
            or the paths in its training config when those files exist.
        device: where the model runs.
    """
    pf = load_prompt(prompt)
    cfg_model, cfg_pretrained = pf.config.get("model"), pf.config.get("pretrained")
    if model is None:
        model = cfg_model if cfg_model and os.path.isfile(cfg_model) else pf.model
    if pretrained is None:
        pretrained = cfg_pretrained if cfg_pretrained and os.path.isfile(cfg_pretrained) else pf.pretrained
    return PromptClassifier(load_clip(model, pretrained, device), pf)
