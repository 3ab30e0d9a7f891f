"""Zero-training OOD scoring with a learned prompt (or plain zero-shot prompts).

``PromptScorer`` holds a frozen CLIP model and the K class text features, computed once: the
prompt file's stored ``text_features`` when the model's weights are the ones the prompt was
made with (no text-encoder pass), else re-encoded from the stored context.

Logits = ``logit_scale.exp() * cos(image, text)``; MCM (tau = 1) and GL-MCM take the cosines,
MSP, Energy and MaxLogit the logits (docs/method.md §2). The post-hoc baselines of Table 8 treat
the prompt as a linear classifier head on the normalised image feature ``x``: weight
``W = logit_scale.exp() * text_features`` [K, e], no bias, so that ``logits = W x``. GradNorm,
ReAct, KNN and ViM are then the core's formulas (:mod:`clip_smot.scores`, shared with the
ResNet track) with ``x`` as the penultimate feature (GradNorm's with ``logit_scale.exp() * x``: its gradient is
taken with respect to ``text_features``); ReAct, KNN and ViM need statistics of ID
training features (:meth:`PromptScorer.fit_id_train`); ODIN runs the frozen image encoder
again on perturbed pixels (:meth:`PromptScorer.odin`). Every score: higher = more ID.

Example::

    scorer = PromptScorer.from_file("prompt.safetensors", device="cuda")
    out = scorer.score([Image.open("cat.jpg")])      # {"mcm": [1], ..., "pred_index": [1]}
    result = scorer.score_paths(["images/"])         # per-file scores, from the feature cache
"""

from __future__ import annotations

import numbers
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from PIL import Image

from clip_smot import scores as S
from clip_smot.clip import model as cm
from clip_smot.clip.decoding import resolve_decode, strip_square
from clip_smot.clip.features import (
    ImageFeatures,
    encode_files,
    image_batches,
    normalized_features,
    unit_rows,
)
from clip_smot.clip.model import ClipModel, weights_flag
from clip_smot.clip.prompt_file import PromptFile, load_prompt
from clip_smot.common.bundled import bundled_file, bundled_text
from clip_smot.common.device import resolve_device, resolve_precision
from clip_smot.common.distributed import share_work
from clip_smot.common.errors import UserError
from clip_smot.common.files import plain_name, sha256_file
from clip_smot.common.image_sets import image_files
from clip_smot.common.images import eight_bit
from clip_smot.common.shards import is_shard
from clip_smot.scores import gl_mcm

__all__ = [
    "CLIP_SCORERS",
    "DEFAULT_SCORES",
    "FITTED_SCORES",
    "SCORE_NAMES",
    "PathScores",
    "PromptScorer",
    "none_readable",
    "parse_scores",
    "resolve_pretrained",
    "scores_from_features",
    "skipped_kind",
    "zero_shot_source",
    "zero_shot_template",
]

@dataclass
class _Head:
    """A batch seen as the linear head of the module docstring: ``logits = W x`` on the normalised
    image feature ``x``, ``W = logit_scale * text``, no bias."""

    x: torch.Tensor  # [B, e], normalised
    text: torch.Tensor  # [K, e], normalised
    logit_scale: torch.Tensor | float  # CLIP's logit_scale.exp()
    cosine: torch.Tensor  # [B, K]
    logits: torch.Tensor  # [B, K] = logit_scale * cosine
    local_features: torch.Tensor | None  # [B, P, e], normalised patch features (GL-MCM's)
    tau: float  # MCM / GL-MCM temperature
    local_weight: float  # weight of local MCM in GL-MCM


def _gl_mcm(h: _Head, fitted: dict) -> torch.Tensor:
    if h.local_features is None:
        raise ValueError("gl-mcm needs local (patch) features")
    local_cosine = h.local_features.float() @ h.text.T  # [B, P, K]
    return gl_mcm(h.cosine, local_cosine, tau=h.tau, local_weight=h.local_weight)


def _odin(h: _Head, fitted: dict) -> torch.Tensor:
    raise ValueError("odin needs the images, not their features (PromptScorer.odin)")


# Each score from a batch's head and fit_id_train's statistics; the keys, in this order, are the
# names --scores takes (:data:`SCORE_NAMES`).
CLIP_SCORERS: dict[str, Callable[[_Head, dict], torch.Tensor]] = {
    "mcm": lambda h, fit: S.mcm(h.cosine, h.tau),
    "msp": lambda h, fit: S.msp(h.logits),
    "energy": lambda h, fit: S.energy(h.logits),
    "maxlogit": lambda h, fit: S.maxlogit(h.logits),
    "gl-mcm": _gl_mcm,
    "odin": _odin,
    # d KL / d t = (softmax - 1/K) (logit_scale x)^T, as z = t (logit_scale x)
    "gradnorm": lambda h, fit: S.gradnorm(h.logits, h.logit_scale * h.x),
    "react": lambda h, fit: S.react(h.x, h.logit_scale * h.text, None, fit["react_threshold"]),
    "knn": lambda h, fit: S.knn(h.x, fit["knn_bank"]),
    "vim": lambda h, fit: S.vim(h.x, h.logits, fit["vim"]["u"], fit["vim"]["NS"], fit["vim"]["alpha"]),
}
SCORE_NAMES = tuple(CLIP_SCORERS)
DEFAULT_SCORES = ("mcm",)
_SOFTMAX_SCORES = ("mcm", "gl-mcm", "msp", "odin", "gradnorm")  # of a softmax over the classes: constant for one
_FITTED = {"react": "react_threshold", "knn": "knn_bank", "vim": "vim"}  # score: its key in fit_id_train's dict
FITTED_SCORES = tuple(_FITTED)  # need statistics of ID training features


def parse_scores(names: Sequence[str] | str | None, flag: str = "--scores") -> list[str]:
    """Lower-cased, de-duplicated score names; an unknown name is a UserError listing the known."""
    if names is None:
        return list(DEFAULT_SCORES)
    if isinstance(names, str):
        names = names.split(",")
    # (123 stopped on "'int' object is not iterable", [None] on "'NoneType' object has no attribute 'strip'")
    if not isinstance(names, (list, tuple)) or not all(isinstance(n, str) for n in names):
        raise TypeError(f"{flag}: score names must be a comma-separated string or a list of strings, got {names!r}")
    out: list[str] = []
    for n in (s.strip().lower() for s in names):
        if not n:
            continue
        if n not in SCORE_NAMES:
            raise UserError(f"{flag}: unknown score {n!r} (known: {', '.join(SCORE_NAMES)})")
        if n not in out:
            out.append(n)
    if not out:
        raise UserError(f"{flag}: no score given (known: {', '.join(SCORE_NAMES)})")
    return out


def _same_width(name: str, features: torch.Tensor, text_features: torch.Tensor) -> None:
    """Refuse image features of another width e than the text features' (the product stopped on "mat1 and
    mat2 shapes cannot be multiplied (2x16 and 32x3)")."""
    if features.shape[-1:] != text_features.shape[-1:]:
        raise ValueError(f"{name} {list(features.shape)} and text_features {list(text_features.shape)} must be of "
                         f"the same width e (their last axis)")


def fit_id_train(train_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor | float,
                 scores: Sequence[str]) -> dict:
    """Statistics of ID training images for the fitted scores among ``scores`` (react, knn, vim).

    Args:
        train_features: normalised image features of the ID training images, [N, e].
        text_features: [K, e], normalised (the head is ``logit_scale * text_features``).
        logit_scale: CLIP's ``logit_scale.exp()``.
        scores: score names; only those in :data:`FITTED_SCORES` are fitted.

    Returns:
        ``{"react_threshold": float, "knn_bank": [N, e], "vim": {...}}``, the keys asked for.

    Raises:
        UserError: fewer training images than KNN's k, or too few for ViM's principal space.
    """
    _same_width("train_features", train_features, text_features)
    x = train_features.float()
    W = logit_scale * text_features.to(x.device, torch.float32)  # [K, e]
    fitted: dict = {}
    if "react" in scores:
        fitted["react_threshold"] = S.react_threshold(x)
    if "knn" in scores:
        if x.shape[0] < S.KNN_K:
            raise UserError(f"--id-train: knn needs at least {S.KNN_K} ID training images, found {x.shape[0]}")
        fitted["knn_bank"] = F.normalize(x, dim=-1)
    if "vim" in scores:
        try:
            fitted["vim"] = S.vim_fit(x, x @ W.T, W, torch.zeros(W.shape[0]))
        except ValueError as e:  # too few training images for its principal space
            raise UserError(f"--id-train: {e}") from None
    return fitted


def scores_from_features(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    logit_scale: torch.Tensor | float,
    scores: Sequence[str] | str,
    local_features: torch.Tensor | None = None,
    tau: float = 1.0,
    local_weight: float = 1.0,
    fitted: dict | None = None,
) -> dict[str, torch.Tensor]:
    """OOD scores and predictions from normalised features (every score but ``odin``).

    Args:
        image_features: [B, e], normalised.
        text_features: [K, e], normalised.
        logit_scale: CLIP's ``logit_scale.exp()``.
        scores: names from :data:`SCORE_NAMES`, except ``odin`` (it needs the images); a str is
            read as ``--scores`` reads it (:func:`parse_scores`: comma-separated).
        local_features: [B, P, e], normalised patch features (needed for ``gl-mcm``).
        tau: MCM / GL-MCM temperature (1, docs/method.md §4).
        local_weight: weight of local MCM in GL-MCM.
        fitted: :func:`fit_id_train`'s statistics (needed for react, knn, vim).

    Returns:
        ``{score: [B] float32, ..., "pred_index": [B] int64}``.
    """
    # (NaN gave NaN scores of finite features; None stopped in the product naming no argument)
    real = (isinstance(logit_scale, numbers.Real) and not isinstance(logit_scale, bool)) or (
        isinstance(logit_scale, torch.Tensor) and logit_scale.numel() == 1 and logit_scale.is_floating_point())
    if not real or not 0 < float(logit_scale) <= torch.finfo(torch.float32).max:  # (as the logits are float32)
        raise ValueError(f"logit_scale must be a number > 0 and finite in float32, got {logit_scale!r}")
    _same_width("image_features", image_features, text_features)
    if local_features is not None:
        _same_width("local_features", local_features, text_features)
    if isinstance(scores, str):  # ("mcm" was read as its letters: KeyError 'm')
        scores = parse_scores(scores, "scores")
    text = text_features.to(image_features.device, torch.float32)
    x = image_features.float()  # [B, e]
    cosine = x @ text.T  # [B, K]
    head = _Head(x, text, logit_scale, cosine, logit_scale * cosine, local_features, tau, local_weight)
    out: dict[str, torch.Tensor] = {}
    for name in scores:
        if name in FITTED_SCORES and (fitted is None or not _has_fit(fitted, name)):
            raise ValueError(f"{name} needs statistics of ID training features (fit_id_train)")
        out[name] = CLIP_SCORERS[name](head, fitted)
    out["pred_index"] = cosine.argmax(dim=-1)
    return out


def _check_finite_scores(out: dict[str, torch.Tensor], names: Sequence[str], paths: Sequence[str]) -> None:
    """A UserError naming the score and the first image when a score is not finite (the features,
    text features and temperature were checked: the score's own arithmetic is left)."""
    for name in (n for n in names if n in out):
        bad = ~torch.isfinite(out[name])
        if bad.any():
            raise UserError(f"--scores {name}: non-finite scores ({int(bad.sum())} of {len(bad)} images, first "
                            f"{paths[int(bad.nonzero()[0])]}: {float(out[name][bad][0])})")


def _has_fit(fitted: dict, name: str) -> bool:
    return _FITTED[name] in fitted


@dataclass
class PathScores:
    """Scores of image files: ``scores[name][i]`` belongs to ``paths[i]``."""

    paths: list[str]
    scores: dict[str, torch.Tensor]
    skipped: list[tuple[str, str]]


def _load_other_model(p: PromptFile, model: str, weights: str, found: bool, device: torch.device):
    """``load_clip(model, weights)`` for a prompt scored with another ``model`` than its own. Where
    the weights are the prompt's own, found by name (no --pretrained given), and do not load into
    ``model``, the line blames the --model given, not a --pretrained the user never typed."""
    try:
        return cm.load_clip(model, weights, device)
    except UserError as e:
        cause = str(e).partition(": could not load the weights (")[2]
        if not found or not cause:
            raise
        raise UserError(f"--model {model}: {p.path} was made for {p.model}, whose weights (its {weights}, found by "
                        f"name) do not load into {model} ({cause.removesuffix(')')}); leave --model out to use the "
                        f"prompt's model, or give --pretrained weights of {model}") from None


def resolve_pretrained(prompt: PromptFile) -> str:
    """The pretrained tag of the prompt, or its checkpoint file if it can be found nearby: a file
    of its name next to the prompt or in the current folder, with its SHA-256 (checkpoints of
    other weights share names: every hub download is open_clip_pytorch_model.bin).

    Raises:
        UserError: the stored name is not a plain name (a tag or file name that holds a folder),
            a name without a SHA-256 is no tag of the prompt's model, or no such file is found.
    """
    if prompt.pretrained:  # (a tag is a plain name too: load_clip would read a path given as a tag)
        plain_name(prompt.pretrained, f"--prompt {prompt.path}: metadata 'pretrained'", "pass --pretrained")
    if not prompt.checkpoint_sha256:  # a tag, or "" for random weights
        # (load_clip reads a file of that name in the current folder when it is no tag: unchecked weights)
        if prompt.pretrained and not cm.is_pretrained_tag(prompt.model, prompt.pretrained):
            raise UserError(f"--prompt {prompt.path}: metadata 'pretrained' {prompt.pretrained!r} is no pretrained tag "
                            f"of {prompt.model}, and names no checkpoint file (no checkpoint_sha256); pass --pretrained")
        return prompt.pretrained
    others = []
    for folder in (Path(prompt.path).parent, Path.cwd()):
        candidate = folder / prompt.pretrained
        if candidate.is_file() and str(candidate.resolve()) not in others:
            if sha256_file(candidate) == prompt.checkpoint_sha256:
                return str(candidate)
            others.append(str(candidate.resolve()))
    where = f"{', '.join(others)} is another file of that name" if others else \
        "it is not next to the prompt nor in the current folder"
    raise UserError(
        f"--pretrained: {prompt.path} was made with the checkpoint file {prompt.pretrained} "
        f"(sha256 {prompt.checkpoint_sha256[:12]}...); {where}; pass --pretrained path/to/{prompt.pretrained}"
    )


def zero_shot_template() -> str:
    """The template ``eval --zero-shot`` fills: prompts/zero_shot_template.txt, MCM's "a photo of a {c}".

    Raises:
        UserError: naming the file (which a user may edit), when it is not UTF-8 or holds no
            template: empty (the built-in one was used instead, without a word), more than one
            line (read as one prompt, the lines joined), or without ``{c}``.
    """
    text = bundled_text("prompts", "zero_shot_template.txt").strip()
    lines = text.splitlines()
    if len(lines) != 1 or "{c}" not in text:
        why = "is empty" if not lines else "holds more than one line" if len(lines) > 1 else "holds no {c}"
        raise UserError(f"{bundled_file('prompts', 'zero_shot_template.txt')}: {why}; it holds one template, one line "
                        "with {c} where the class name goes (a photo of a {c})")
    return text


def zero_shot_source(template: str) -> str:
    """What a zero-shot scorer's text features came from (its ``source``, which eval writes in
    metrics.json as ``text_features``: reproduce compares a finished zero-shot stage's with it)."""
    return f"zero-shot prompts {template!r}"


class PromptScorer:
    """A frozen CLIP model with K class text features, scoring images without training.

    Args:
        clip: the loaded model (its device is where scoring runs).
        text_features: [K, e] normalised class text features.
        classnames: the K class names.
        source: what the text features came from (for reports).
        precision: the image encoder's arithmetic, ``auto`` (bf16 on CUDA, fp32 on the CPU),
            ``bf16``, ``fp16`` or ``fp32`` (:func:`~clip_smot.common.device.resolve_precision`).
    """

    def __init__(self, clip: ClipModel, text_features: torch.Tensor, classnames: Sequence[str], source: str = "",
                 precision: str = "auto"):
        from clip_smot.clip.prompt import class_names

        classnames = class_names(classnames)
        if text_features.ndim != 2 or text_features.shape[0] != len(classnames):
            raise ValueError(f"text_features {tuple(text_features.shape)} do not match {len(classnames)} class names")
        e = clip.config.get("embed_dim") if isinstance(clip.config, dict) else None
        # (text features of another width than the model's image features stopped at the first image: "mat1 and
        # mat2 shapes cannot be multiplied")
        if isinstance(e, int) and text_features.shape[1] != e:
            raise ValueError(f"text_features {list(text_features.shape)} must be of {clip.name}'s width {e}, as its "
                             f"image features [B, {e}]")
        self.clip = clip
        self.device = next(clip.model.parameters()).device
        self.precision = resolve_precision(precision, self.device)
        self.text_features = F.normalize(text_features.float(), dim=-1).to(self.device)  # [K, e]
        self.classnames = list(classnames)
        self.logit_scale = cm.logit_scale(clip).float()
        self.source = source
        self.fitted: dict = {}  # statistics of ID training features (fit_id_train)
        self._check_finite_inputs()

    def _check_finite_inputs(self) -> None:
        """A UserError naming the weights when the text features are not finite, or of no length
        once normalised (a row of norm 0 or one overflowing: every image then scored alike; a prompt
        file's own tensors are checked when it is loaded, the temperature when the model is)."""
        bad = ~unit_rows(self.text_features)  # [K]
        if bad.any():
            raise UserError(f"{weights_flag(self.clip)}: the {self.source or 'text features'} are not finite, or of "
                            f"no length ({int(bad.sum())} of {len(bad)} classes, first "
                            f"{self.classnames[int(bad.nonzero()[0])]!r}); the text encoder's weights hold NaN or inf, "
                            "or overflow")

    @classmethod
    def from_file(
        cls,
        prompt: str | os.PathLike | PromptFile,
        model: str | None = None,
        pretrained: str | None = None,
        device: str | torch.device = "auto",
        precision: str = "auto",
    ) -> "PromptScorer":
        """Load a prompt file and its model (from the metadata unless ``model``/``pretrained`` say otherwise).

        The stored text features are used as they are when the weights are the prompt's own
        (:meth:`PromptFile.check_model` is True); otherwise they are encoded again from the
        stored context with the model in use. The model is built with the prompt's activation
        (its metadata); weights or a ``model`` built with the other are refused.

        Raises:
            UserError: not a prompt file, a prompt made for another architecture or activation,
                missing weights.
        """
        p = prompt if isinstance(prompt, PromptFile) else load_prompt(prompt)
        dev = resolve_device(device) if isinstance(device, str) else device
        weights = pretrained if pretrained is not None else resolve_pretrained(p)
        if model is None:  # the prompt's model, with the activation it was made with
            plain_name(p.model, f"--prompt {p.path}: metadata 'model'", "pass --model")
            clip = cm.load_clip_for_prompt(p.model, p.model_config, weights, dev, p.activation, f"--prompt {p.path}")
        else:
            clip = _load_other_model(p, model, weights, pretrained is None, dev)
        if p.check_model(clip.identity()):
            text, source = p.text_features, "stored text features"
        else:
            from clip_smot.clip.prompt import text_features_from_prompt

            text, source = text_features_from_prompt(clip, p), "text features re-encoded from the stored context"
        return cls(clip, text, p.classnames, source=source, precision=precision)

    @classmethod
    def zero_shot(
        cls,
        classnames: Sequence[str],
        model: str = "ViT-B-16",
        pretrained: str | None = "openai",
        device: str | torch.device = "auto",
        template: str | None = None,
        precision: str = "auto",
    ) -> "PromptScorer":
        """Plain CLIP prompts (MCM's "a photo of a {c}" by default): the zero-shot MCM baseline."""
        from clip_smot.clip.prompt import ZERO_SHOT_TEMPLATE, class_names, zero_shot_text_features

        classnames = class_names(classnames)  # (before the model loads)
        dev = resolve_device(device) if isinstance(device, str) else device
        clip = cm.load_clip(model, pretrained, dev)
        template = template or ZERO_SHOT_TEMPLATE
        text = zero_shot_text_features(clip, classnames, template)
        return cls(clip, text, classnames, source=zero_shot_source(template), precision=precision)

    @torch.inference_mode()
    def cosine(self, images: torch.Tensor) -> torch.Tensor:
        """Cosine similarities [B, K] of images [B, 3, S, S] in [0, 1] (not normalised) with the K prompts."""
        # (uint8 pixels 0 .. 255, as torchvision.io reads them, were taken for values in [0, 1]: as CAMProvider)
        if not isinstance(images, torch.Tensor) or not images.is_floating_point():
            raise TypeError(f"images must be a float tensor of values in [0, 1], got "
                            f"{images.dtype if isinstance(images, torch.Tensor) else type(images).__name__}")
        self._check_images(images)
        mean = torch.tensor(self.clip.mean, device=self.device).view(1, 3, 1, 1)
        std = torch.tensor(self.clip.std, device=self.device).view(1, 3, 1, 1)
        x = (images.to(self.device).float() - mean) / std
        return normalized_features(self.clip, x, precision=self.precision)[0] @ self.text_features.T

    def _check_images(self, images: torch.Tensor) -> None:
        """Refuse a batch the image encoder cannot take: not [B, 3, S, S] at the model's size S (open_clip
        stopped on "The size of tensor a (5) must match the size of tensor b (17)", channels-last images
        likewise; one image [3, S, S] was scored as a batch of one), or of no image (a reshape error)."""
        S = self.clip.image_size
        if images.ndim != 4 or tuple(images.shape[1:]) != (3, S, S):
            raise ValueError(f"images must be a batch [B, 3, {S}, {S}] for {self.clip.name}, got shape "
                             f"{list(images.shape)}")
        if images.shape[0] == 0:
            raise ValueError(f"images must hold at least one image, got shape {list(images.shape)}")

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """CLIP logits [B, K] = ``logit_scale.exp() * cos(image, text)`` of images in [0, 1]."""
        return self.logit_scale * self.cosine(images)

    def decoder(self, decode: str) -> str:
        """The decoder (``pil`` or ``jpeg``) of a ``--decode`` choice (``auto``, ``cpu``, ``gpu``) for
        this scorer's device and preprocessing (:func:`~clip_smot.clip.decoding.resolve_decode`)."""
        return resolve_decode(decode, self.device, cm.preprocess_settings(self.clip))

    def check_scores(self, scores: Sequence[str]) -> None:
        """Raise a UserError before any image is encoded when the model cannot give a score asked
        for: gl-mcm of a non-ViT, or a fitted score (react, knn, vim) before :meth:`fit_id_train`."""
        if "gl-mcm" in scores:
            cm.check_local_features(self.clip)
        unfitted = [n for n in scores if n in FITTED_SCORES and not _has_fit(self.fitted, n)]
        if unfitted:
            raise UserError(f"--scores {','.join(unfitted)}: needs features of ID training images; "
                            "clip-smot eval fits them (--id-train, or the prompt's own few-shot images)")

    def constant_scores(self, scores: Sequence[str]) -> list[str]:
        """Those of ``scores`` that are the same for every image because the prompt has one class:
        a softmax over one class is 1 (mcm, gl-mcm, msp, odin), its gradient 0 (gradnorm)."""
        return [n for n in scores if n in _SOFTMAX_SCORES] if len(self.classnames) == 1 else []

    def one_class_note(self, scores: Sequence[str]) -> str | None:
        """The note for a prompt of one class (:meth:`constant_scores`), or None."""
        constant = self.constant_scores(scores)
        if not constant:
            return None
        return (f"note: the prompt has one class ({self.classnames[0]}): {', '.join(constant)} "
                f"{'is' if len(constant) == 1 else 'are'} the same for every image (a softmax over one class is 1); "
                "energy and maxlogit still tell images apart")

    def fit_id_train(self, train_features: torch.Tensor, scores: Sequence[str]) -> None:
        """Fit ReAct, KNN and ViM (those among ``scores``) on normalised ID-train image features [N, e]."""
        self.fitted.update(fit_id_train(train_features.to(self.device), self.text_features, self.logit_scale, scores))

    def odin(self, images: torch.Tensor) -> torch.Tensor:
        """ODIN scores [B] (on the CPU) of preprocessed images [B, 3, S, S], through the frozen image encoder.

        The input step follows the gradient through the whole image encoder, so ODIN cannot
        come from cached features: every image is encoded twice, with a backward pass between.
        """
        self._check_images(images)
        std = torch.tensor(self.clip.std, device=self.device)

        def forward(x: torch.Tensor) -> torch.Tensor:  # normalised images -> logits [B, K]
            g = normalized_features(self.clip, x, precision=self.precision)[0]  # [B, e]
            return self.logit_scale * g @ self.text_features.T

        return S.odin(forward, images.to(self.device), std).cpu()

    def odin_files(self, paths: Sequence[str], batch_size: int = 256, workers: int = 4, decode: str = "pil"
                   ) -> torch.Tensor:
        """ODIN scores [N] of image files (all readable: pass the paths an :class:`ImageFeatures` kept);
        under torchrun each process scores its share (:func:`~clip_smot.common.distributed.share_work`)."""
        return torch.cat(share_work(lambda share: self._odin_files(share, batch_size, workers, decode), paths,
                                    batch_size))

    def _odin_files(self, paths: Sequence[str], batch_size: int, workers: int, decode: str) -> torch.Tensor:
        out = []
        for images, errors in image_batches(self.clip, paths, batch_size, workers, decode):
            bad = [e for e in errors if e]
            if bad:
                raise UserError(bad[0])
            out.append(self.odin(images))
        return torch.cat(out)

    def score(self, images: Sequence[Image.Image] | torch.Tensor, scores: Sequence[str] | str | None = ("mcm", "msp", "energy", "maxlogit")) -> dict[str, torch.Tensor]:
        """Score a batch of images.

        Args:
            images: a list of PIL images, or a tensor [B, 3, S, S] already preprocessed
                (resized, cropped and normalised with the model's mean/std; unlike
                :meth:`cosine` and :meth:`logits`, which take images in [0, 1]).
            scores: names from :data:`SCORE_NAMES`.

        Returns:
            ``{score: [B], ..., "pred_index": [B]}`` on the CPU.
        """
        names = parse_scores(scores)
        self.check_scores(names)
        if torch.is_tensor(images):
            if not images.is_floating_point():  # (preprocessed images are normalised floats)
                raise TypeError(f"images must be a list of PIL images or a float tensor of preprocessed images, got "
                                f"{images.dtype}")
            images = images.float()  # (a float64 batch from numpy stopped in the first layer: "expected Double")
            self._check_images(images)
        elif not isinstance(images, (list, tuple)) or not all(isinstance(im, Image.Image) for im in images):
            # (a numpy batch stopped on "'numpy.ndarray' object has no attribute 'mode'", naming no argument)
            what = type(images).__name__ if not isinstance(images, (list, tuple)) else \
                f"a {type(images).__name__} of {', '.join(sorted({type(im).__name__ for im in images}))}"
            raise TypeError(f"images must be a list of PIL images or a float tensor of preprocessed images, got {what}")
        elif not images:  # (torch.stack stopped: "stack expects a non-empty TensorList")
            raise ValueError("images must hold at least one image, got an empty list")
        else:
            transform, settings = cm.image_preprocess(self.clip), cm.preprocess_settings(self.clip)
            # as files are read: open_clip's transform converts to RGB itself, after resizing
            images = torch.stack([transform(strip_square(eight_bit(im), settings)) for im in images])  # [B, 3, S, S]
        with torch.inference_mode():
            g, l = normalized_features(self.clip, images.to(self.device), "gl-mcm" in names,
                                       self.precision)  # [B, e], [B, P, e]
            out = scores_from_features(g, self.text_features, self.logit_scale, [n for n in names if n != "odin"],
                                       l, fitted=self.fitted)
        if "odin" in names:
            out["odin"] = self.odin(images)
        out = {k: out[k].cpu() for k in [*names, "pred_index"]}
        _check_finite_scores(out, names, [f"image {i}" for i in range(len(g))])
        return out

    @torch.inference_mode()
    def score_features(self, feats: ImageFeatures, scores: Sequence[str], chunk: int = 1024) -> dict[str, torch.Tensor]:
        """Scores (and ``pred_index``) of precomputed features, on the CPU; ``odin`` is left out
        (it needs the images: :meth:`odin_files`).

        Works through ``chunk`` images at a time: with patch features, the per-patch cosines
        of ImageNet val alone ([50000, 196, 1000] floats) would not fit on a GPU.
        """
        names = [n for n in parse_scores(scores) if n != "odin"]
        parts: dict[str, list[torch.Tensor]] = {}
        for i in range(0, len(feats.global_), chunk):
            g = feats.global_[i : i + chunk].to(self.device, non_blocking=True)  # [c, e]
            l = feats.local[i : i + chunk].to(self.device, non_blocking=True) if feats.local is not None else None
            for k, v in scores_from_features(g, self.text_features, self.logit_scale, names, l,
                                             fitted=self.fitted).items():
                parts.setdefault(k, []).append(v)
        out = {k: torch.cat(v).cpu() for k, v in parts.items()}
        _check_finite_scores(out, names, feats.paths)
        return out

    def score_paths(
        self,
        paths: Sequence[str | os.PathLike],
        scores: Sequence[str] | str | None = None,
        batch_size: int = 256,
        workers: int = 4,
        skip_unreadable: bool = False,
        use_cache: bool = True,
        decode: str = "cpu",
    ) -> PathScores:
        """Score what ``clip-smot score`` takes as PATH, one feature-cache entry per argument:
        image files, folders (searched recursively), image lists (``LIST.txt``,
        ``ROOT::LIST.txt``) and tar shards (:func:`~clip_smot.common.image_sets.iter_image_files`).
        ``decode``: ``cpu`` (PIL in the workers), ``gpu`` (JPEGs decoded on the model's CUDA
        device) or ``auto`` (:func:`~clip_smot.clip.decoding.resolve_decode`).

        Raises:
            UserError: a missing path, a folder without images, a list naming a missing file, an
                unreadable image (unless ``skip_unreadable``; then only when no file of any
                argument is readable), gl-mcm with a non-ViT model, non-finite features or scores.
        """
        _path_list("paths", paths)
        if not len(paths):  # (an IndexError where the first unreadable file is named)
            raise ValueError("paths must name at least one image file, folder, list or shard, got none")
        listed = [image_files(arg, flag="PATH") for arg in paths]  # (every argument checked first)
        names = parse_scores(scores)
        self.check_scores(names)
        decoder = self.decoder(decode)
        results = [self.score_files(files, names, batch_size, workers, skip_unreadable, use_cache, decoder)
                   for files in listed]
        result = PathScores([p for r in results for p in r.paths], {}, [s for r in results for s in r.skipped])
        if not result.paths:  # judged over all the arguments: one unreadable file among readable ones is skipped
            raise none_readable(result.skipped)
        result.scores = {k: torch.cat([r.scores[k] for r in results if r.paths]) for k in [*names, "pred_index"]}
        return result

    def score_files(self, files: Sequence[str | os.PathLike], names: Sequence[str], batch_size: int = 256,
                    workers: int = 4, skip_unreadable: bool = False, use_cache: bool = True,
                    decode: str = "pil") -> PathScores:
        """Scores of one list of image files, one feature-cache entry; with ``skip_unreadable``,
        no paths and no scores when none of them is readable (the caller judges). ``decode``:
        ``pil`` or ``jpeg`` (:mod:`clip_smot.clip.decoding`)."""
        _path_list("files", files)
        feats = encode_files(self.clip, files, "gl-mcm" in names, batch_size, workers, skip_unreadable, use_cache,
                             decode, self.precision)
        if not feats.paths:
            return PathScores([], {}, feats.skipped)
        out = self.score_features(feats, names)
        if "odin" in names:
            out["odin"] = self.odin_files(feats.paths, batch_size, workers, decode)
        return PathScores(feats.paths, out, feats.skipped)


def _path_list(name: str, paths) -> None:
    """Refuse one path given where a list of them is read: a str was read as its letters ("PATH p: no such
    file or folder" for "p.png")."""
    if isinstance(paths, (str, bytes, os.PathLike)):
        raise TypeError(f"{name} must be a list of paths, got one {type(paths).__name__} {os.fspath(paths)!r} "
                        f"(pass [{os.fspath(paths)!r}])")


def none_readable(skipped: Sequence[tuple[str, str]]) -> UserError:
    """The error of a run whose every image was skipped as unreadable (``skipped``: (path, reason) pairs)."""
    return UserError(f"none of the {len(skipped)} {skipped_kind(skipped)} could be read; the first: {skipped[0][1]}")


def skipped_kind(skipped: Sequence[tuple[str, str]]) -> str:
    """What ``skipped`` holds, for a message: "image(s)", or "image(s) or shard(s)" where score
    --skip-unreadable left out a tar shard that could not be listed."""
    return "image(s) or shard(s)" if any(is_shard(path) for path, _ in skipped) else "image(s)"
