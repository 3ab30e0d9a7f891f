"""CLIP-side scores by hand: MCM's and GL-MCM's temperature and local weight as passed, and the
scorer's own cosines and logits against open_clip's model run directly."""

import math

import pytest
import torch
import torch.nn.functional as F
from helpers import tiny  # noqa: F401 (fixture)

from clip_smot.clip.scorer import PromptScorer, scores_from_features


def _softmax_max(values, tau):
    e = [math.exp(v / tau) for v in values]
    return max(e) / sum(e)


def test_tau_and_local_weight_reach_mcm_and_gl_mcm():
    g = torch.tensor([[0.6, 0.8]])  # unit: cosines with the identity text are its coordinates
    local = torch.tensor([[[1.0, 0.0], [0.28, 0.96]]])  # two unit patches
    tau, w = 0.5, 0.25
    out = scores_from_features(g, torch.eye(2), 100.0, ["mcm", "gl-mcm", "msp"], local_features=local, tau=tau,
                               local_weight=w)
    mcm = _softmax_max([0.6, 0.8], tau)
    local_mcm = max(_softmax_max([1.0, 0.0], tau), _softmax_max([0.28, 0.96], tau))
    assert out["mcm"].item() == pytest.approx(mcm, abs=1e-6)
    assert out["gl-mcm"].item() == pytest.approx(mcm + w * local_mcm, abs=1e-6)
    assert out["msp"].item() == pytest.approx(_softmax_max([60.0, 80.0], 1.0), abs=1e-6)  # tau is MCM's alone


def test_scorer_cosines_and_logits_are_open_clips(tiny):  # noqa: F811
    g = torch.Generator().manual_seed(0)
    text = torch.randn(3, tiny.config["embed_dim"], generator=g)
    scorer = PromptScorer(tiny, 4.0 * text, ["a", "b", "c"], precision="fp32")  # (not normalised on purpose)
    images = torch.rand(2, 3, 32, 32, generator=g)  # in [0, 1]
    size = tiny.model.visual.image_size
    size = size[0] if isinstance(size, (tuple, list)) else size
    images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)
    mean = torch.tensor(tiny.mean).view(1, 3, 1, 1)
    std = torch.tensor(tiny.std).view(1, 3, 1, 1)
    with torch.no_grad():
        feats = F.normalize(tiny.model.encode_image((images - mean) / std).float(), dim=-1)
        scale = tiny.model.logit_scale.exp().item()
    want = feats @ F.normalize(text, dim=-1).T
    torch.testing.assert_close(scorer.cosine(images), want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(scorer.logits(images), scale * want, atol=1e-4, rtol=1e-5)
    assert abs(scale - 1.0) > 1e-3  # (the check above would not tell exp(logit_scale) from 1)
