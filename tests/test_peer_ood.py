"""The post-hoc scores and the metrics against a peer OOD library, pytorch-ood, whose code
nobody here wrote (the test extras install it).

pytorch-ood's detectors return outlier scores (higher = more OOD), so each of ours is minus
theirs; its metrics take OOD as the positive class (labels < 0) and outlier scores. Its AUPR is
the trapezoid rule, where ours is scikit-learn's average precision (MCM's, docs/method.md §5):
the AUPRs are not compared.
"""

import numpy as np
import pytest
import torch
from pytorch_ood import detector as D
from pytorch_ood.metrics import functional as PM

from clip_smot import scores as S
from clip_smot.metrics import ood_metrics


def _logits(seed: int = 0, B: int = 64, K: int = 10) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, K, generator=g) * 3


@pytest.mark.parametrize("name", ["msp", "maxlogit", "energy"])
def test_logit_scores_are_minus_pytorch_oods(name):
    logits = _logits()
    theirs = {"msp": D.MaxSoftmax.score, "maxlogit": D.MaxLogit.score, "energy": D.EnergyBased.score}[name](logits)
    torch.testing.assert_close(S.SCORES[name][0](logits), -theirs, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("T", [1.0, 10.0])
def test_energy_at_a_temperature_is_minus_pytorch_oods(T):
    logits = _logits(1)
    torch.testing.assert_close(S.energy(logits, T), -D.EnergyBased.score(logits, T), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("tau", [1.0, 0.01])
def test_mcm_is_minus_pytorch_oods(tau):
    g = torch.Generator().manual_seed(2)
    image, text = torch.randn(20, 16, generator=g), torch.randn(7, 16, generator=g)
    cosine = torch.nn.functional.normalize(image, dim=-1) @ torch.nn.functional.normalize(text, dim=-1).T
    theirs = D.MCM(None, text, temperature=tau).predict_features(image)
    torch.testing.assert_close(S.mcm(cosine, tau), -theirs, rtol=1e-5, atol=1e-6)


def test_react_threshold_and_score_are_pytorch_oods():
    g = torch.Generator().manual_seed(3)
    train, test = torch.rand(200, 32, generator=g) * 4, torch.rand(30, 32, generator=g) * 6  # post-ReLU features
    fc = torch.nn.Linear(32, 10)
    with torch.no_grad():
        fc.weight.copy_(torch.randn(10, 32, generator=g))
        fc.bias.copy_(torch.randn(10, generator=g))
    # pytorch-ood clips feature maps [B, C, H, W] before its head; here a 1 x 1 map of the pooled features
    theirs = D.ReAct(backbone=None, head=lambda x: fc(x.flatten(1)), percentile=S.REACT_PERCENTILE / 100)
    theirs.fit_feature_maps(train[:, :, None, None], torch.zeros(200, dtype=torch.long))
    ours = S.react_threshold(train)
    assert ours == pytest.approx(theirs.threshold, rel=1e-6)
    assert (test > ours).any()  # (some activations are clipped)
    torch.testing.assert_close(S.react(test, fc.weight.detach(), fc.bias.detach(), ours),
                               -theirs.predict_feature_maps(test[:, :, None, None]), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("k", [1, 5, S.KNN_K])
def test_knn_is_minus_pytorch_oods_kth_neighbour_distance(k):
    g = torch.Generator().manual_seed(4)
    bank, test = torch.randn(120, 12, generator=g), torch.randn(25, 12, generator=g)
    theirs = D.KNN(None, k=k).fit_features(bank, torch.zeros(120, dtype=torch.long)).predict_features(test)
    torch.testing.assert_close(S.knn(test, bank, k=k).double(), -theirs, rtol=1e-5, atol=1e-5)


def test_vim_is_minus_pytorch_oods():
    # a clear eigen-gap between the principal and the residual space: pytorch-ood decomposes in
    # float32 (our float64), which is only stable then
    g = torch.Generator().manual_seed(5)
    C, d, K = 24, 12, 6
    scale = torch.cat([torch.full((d,), 5.0), torch.full((C - d,), 0.5)])
    basis = torch.linalg.qr(torch.randn(C, C, generator=g))[0]
    train = (torch.randn(500, C, generator=g) * scale) @ basis.T + 1.0
    test = (torch.randn(40, C, generator=g) * scale.flip(0)) @ basis.T + 1.0  # some far off the principal space
    W, b = torch.randn(K, C, generator=g), torch.randn(K, generator=g)
    fitted = S.vim_fit(train, train @ W.T + b, W, b, dim=d)
    theirs = D.ViM(None, d=d, w=W, b=b).fit_features(train, torch.zeros(500, dtype=torch.long))
    assert fitted["alpha"] == pytest.approx(theirs.alpha, rel=1e-4)
    ours = S.vim(test, test @ W.T + b, fitted["u"], fitted["NS"], fitted["alpha"])
    torch.testing.assert_close(ours, -theirs.predict_features(test), rtol=1e-4, atol=1e-3)


def test_gradnorm_closed_form_is_pytorch_oods_backward():
    # pytorch-ood takes the L1 norm of the per-image gradient of the uniform cross entropy, by
    # autograd, here over the last layer's weight alone (as GradNorm's authors do)
    g = torch.Generator().manual_seed(6)
    features = torch.rand(16, 20, generator=g) * 3
    fc = torch.nn.Linear(20, 8)
    with torch.no_grad():
        fc.weight.copy_(torch.randn(8, 20, generator=g))
    theirs = D.GradNorm(fc, param_filter=lambda name: name == "weight").predict(features)
    with torch.no_grad():
        ours = S.gradnorm(fc(features), features)
    torch.testing.assert_close(ours, -theirs, rtol=1e-5, atol=1e-6)


def test_odin_is_minus_pytorch_oods():
    g = torch.Generator().manual_seed(7)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.Tanh(), torch.nn.AdaptiveAvgPool2d(1),
                              torch.nn.Flatten(), torch.nn.Linear(8, 5))
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
    x = torch.randn(6, 3, 8, 8, generator=g)
    std = [0.229, 0.224, 0.225]
    theirs = D.ODIN(net, eps=S.ODIN_EPS, temperature=S.ODIN_T, norm_std=std).predict(x)
    ours = S.odin(net, x, torch.tensor(std))
    torch.testing.assert_close(ours, -theirs, rtol=1e-5, atol=1e-7)
    # the input step changed the score (else the comparison would only be MSP at T)
    plain = (net(x) / S.ODIN_T).softmax(dim=-1).amax(dim=-1).detach()
    assert not torch.allclose(ours, plain, rtol=0, atol=1e-7)


@pytest.mark.parametrize("ties", [False, True])
def test_auroc_and_fpr95_are_pytorch_oods(ties):
    rng = np.random.default_rng(8)
    id_s, ood_s = rng.normal(1.0, 1.0, 300), rng.normal(0.0, 1.0, 400)
    if ties:  # few distinct values: ties across and within the two sets
        id_s, ood_s = np.round(id_s * 2) / 2, np.round(ood_s * 2) / 2
    outlier = torch.tensor(np.r_[-id_s, -ood_s])
    ood_label = torch.tensor(np.r_[np.zeros(300), -np.ones(400)]).long()  # pytorch-ood: OOD < 0, positive
    for convention in ("id", "openood"):
        m = ood_metrics(id_s, ood_s, convention=convention)
        assert m["auroc"] == pytest.approx(float(PM.auroc(outlier, ood_label)), abs=1e-12)
        if convention == "openood":  # OOD positive: OpenOOD's FPR95, and pytorch-ood's
            want = PM.fpr_at_tpr(outlier, ood_label, 0.95)
        else:  # ID positive (the paper's): ID as pytorch-ood's positive class, ID-ness as the score
            want = PM.fpr_at_tpr(torch.tensor(np.r_[id_s, ood_s]), -1 - ood_label, 0.95)
        assert m["fpr95"] == pytest.approx(float(want), abs=1e-12), convention
