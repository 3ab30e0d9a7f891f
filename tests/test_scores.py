"""Post-hoc scores of the ResNet track, each against a computation done by hand (numpy)."""

import math

import numpy as np
import pytest
import torch

from clip_smot import scores as S
from clip_smot.scores import odin


def _softmax(z):
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def test_energy_is_a_logsumexp():
    logits = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]])
    want = [math.log(math.exp(1) + math.exp(2) + math.exp(3)), math.log(3.0)]
    torch.testing.assert_close(S.energy(logits), torch.tensor(want))


def test_temperatures_must_be_positive():
    """energy at T = -1 is minus the log-sum-exp of the negated logits, a soft minimum that ranks the
    images the other way round; T = 0 gave NaN. The same for MCM's tau and ODIN's T."""
    logits, local = torch.tensor([[1.0, 2.0]]), torch.rand(1, 2, 2)
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="temperature must be > 0"):
            S.energy(logits, bad)
        for call in (lambda: S.mcm(logits, bad), lambda: S.local_mcm(local, bad), lambda: S.gl_mcm(logits, local, bad)):
            with pytest.raises(ValueError, match="tau must be > 0"):
                call()
        with pytest.raises(ValueError, match="T must be > 0"):
            odin(lambda x: x.flatten(1), torch.rand(1, 3, 1, 1), torch.ones(3), T=bad)


def test_react_clips_at_the_percentile():
    train = torch.arange(1.0, 11.0).view(2, 5)  # activations 1..10
    thr = S.react_threshold(train, 90.0)
    assert abs(thr - 9.1) < 1e-5  # linear interpolation: 9 + 0.1 * (10 - 9)
    W = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    b = torch.tensor([0.0, 0.5, -1.0])
    h = torch.tensor([[2.0, 20.0], [9.0, 9.0]])
    clipped = np.array([[2.0, 9.1], [9.0, 9.0]])  # only 20 is above 9.1
    z = clipped @ W.numpy().T + b.numpy()
    want = np.log(np.exp(z).sum(axis=-1))
    torch.testing.assert_close(S.react(h, W, b, thr), torch.tensor(want, dtype=torch.float32))
    # a threshold given as a one-element float64 tensor (as torch.quantile returns) clips the same
    torch.testing.assert_close(S.react(h, W, b, torch.tensor([thr], dtype=torch.float64)),
                               torch.tensor(want, dtype=torch.float32))


def test_react_threshold_of_no_features_is_refused():
    with pytest.raises(ValueError, match="react_threshold needs training features"):
        S.react_threshold(torch.zeros(0, 4))


def test_knn_against_brute_force_distances():
    g = torch.Generator().manual_seed(0)
    bank = torch.randn(40, 6, generator=g)
    q = torch.randn(7, 6, generator=g)
    nb = bank.numpy() / np.linalg.norm(bank.numpy(), axis=1, keepdims=True)
    nq = q.numpy() / np.linalg.norm(q.numpy(), axis=1, keepdims=True)
    want = []
    for v in nq:
        d = np.sort(np.sqrt(((nb - v) ** 2).sum(axis=1)))
        want.append(-d[4])  # the 5th nearest
    torch.testing.assert_close(S.knn(q, bank, k=5, chunk=3), torch.tensor(want, dtype=torch.float32), atol=1e-5, rtol=0)


def test_vim_against_a_hand_computation():
    rng = np.random.default_rng(0)
    N, C, K = 200, 4, 3
    X = rng.normal(size=(N, C)) * np.array([5.0, 3.0, 0.3, 0.1]) + 1.0  # principal space: the first two axes
    W = rng.normal(size=(K, C))
    b = rng.normal(size=K)
    logits = X @ W.T + b
    # the ViM authors' recipe, written out
    u = -np.linalg.pinv(W) @ b
    Xc = X - u
    cov = Xc.T @ Xc / N
    vals, vecs = np.linalg.eig(cov)
    NS = vecs.T[np.argsort(vals * -1)[C // 2:]].T  # residual space, dim = C // 2
    vlogit = np.linalg.norm(Xc @ NS, axis=-1)
    alpha = logits.max(axis=-1).mean() / vlogit.mean()
    q = rng.normal(size=(5, C)) * 2
    qz = q @ W.T + b
    want = np.log(np.exp(qz).sum(axis=-1)) - alpha * np.linalg.norm((q - u) @ NS, axis=-1)

    t = lambda a: torch.tensor(a, dtype=torch.float32)  # noqa: E731
    fit = S.vim_fit(t(X), t(logits), t(W), t(b))
    assert fit["dim"] == 2 and abs(fit["alpha"] - alpha) < 1e-3 * abs(alpha)
    torch.testing.assert_close(S.vim(t(q), t(qz), fit["u"], fit["NS"], fit["alpha"]), t(want), atol=1e-3, rtol=1e-4)


def test_vim_takes_a_fit_stored_in_float32():
    """u and NS saved as float32 (a safetensors file, .float()) stopped on 'expected m1 and m2 to have
    the same dtype'. Here NS is the last axis, u the origin: the residual of (3, 4) - (0, 1) is 3."""
    u, NS = torch.tensor([0.0, 1.0]), torch.tensor([[0.0], [1.0]])
    logits = torch.tensor([[0.0, 0.0]])  # energy log 2
    got = S.vim(torch.tensor([[3.0, 4.0]]), logits, u, NS, 0.5).item()
    assert got == pytest.approx(math.log(2) - 0.5 * 3)


def test_vim_refuses_training_features_with_no_residual():
    # n <= 8 images of 16 features span at most n dims around u, all inside ViM's 8-dim principal
    # space: their residual is rounding noise, and alpha (divided by it) would be ~1e14
    rng = np.random.default_rng(0)
    W, b = torch.tensor(rng.normal(size=(3, 16))), torch.tensor(rng.normal(size=3))
    for n in (1, 5, 8):
        X = torch.tensor(rng.normal(size=(n, 16)))
        with pytest.raises(ValueError, match=f"principal dimension 8 \\(of 16 features\\): the {n} given"):
            S.vim_fit(X, X @ W.T + b, W, b)
    X = torch.tensor(rng.normal(size=(40, 16)))
    assert 0 < S.vim_fit(X, X @ W.T + b, W, b)["alpha"] < 100


def test_vim_fits_a_layer_without_bias_at_the_origin():
    """nn.Linear(bias=False).bias is None: u = -pinv(W) 0 = 0 (it was an AttributeError)."""
    g = torch.Generator().manual_seed(0)
    X, W = torch.randn(50, 4, generator=g, dtype=torch.float64), torch.randn(3, 4, generator=g, dtype=torch.float64)
    fit = S.vim_fit(X, X @ W.T, W, None)
    assert fit["u"].tolist() == [0.0] * 4
    vals, vecs = np.linalg.eigh(X.numpy().T @ X.numpy() / 50)  # ascending: the residual is the first two
    vlogit = np.linalg.norm(X.numpy() @ vecs[:, :2], axis=-1)
    assert fit["alpha"] == pytest.approx((X @ W.T).amax(dim=-1).mean().item() / vlogit.mean())


def test_vim_refuses_a_principal_dimension_outside_the_features():
    """dim = -1 took the smallest eigenvector as the whole residual space; dim >= C leaves none and
    was blamed on too few training images."""
    g = torch.Generator().manual_seed(0)
    X, W, b = torch.randn(50, 8, generator=g), torch.randn(3, 8, generator=g), torch.randn(3, generator=g)
    for dim in (-1, 8, 20):
        with pytest.raises(ValueError, match=f"dim must be in \\[0, 7\\] for 8 features, got {dim}"):
            S.vim_fit(X, X @ W.T + b, W, b, dim=dim)
    assert S.vim_fit(X, X @ W.T + b, W, b, dim=7)["NS"].shape == (8, 1)


def test_gradnorm_is_the_l1_norm_of_the_last_layer_gradient():
    torch.manual_seed(0)
    fc = torch.nn.Linear(6, 4)
    h = torch.rand(5, 6) * 3  # penultimate features (after ReLU: >= 0)
    want = []
    for i in range(5):  # the reference implementation: one backward per image, uniform targets
        fc.zero_grad()
        logp = torch.log_softmax(fc(h[i:i + 1]), dim=-1)
        (-(torch.full((1, 4), 0.25) * logp).sum(dim=-1)).mean().backward()
        want.append(fc.weight.grad.abs().sum().item())
    got = S.gradnorm(fc(h).detach(), h)
    torch.testing.assert_close(got, torch.tensor(want), rtol=1e-5, atol=1e-6)


def test_odin_by_hand_on_a_linear_model():
    torch.manual_seed(1)  # (a seed where the step of CE(z / T) and that of CE(z) differ: see the end)
    lin = torch.nn.Linear(12, 3)
    model = torch.nn.Sequential(torch.nn.Flatten(), lin).eval()
    x = torch.randn(4, 3, 2, 2)
    std = torch.tensor([0.2, 0.3, 0.4]).view(1, 3, 1, 1)
    T, eps = 1000.0, 0.0014
    W, b = lin.weight.detach().numpy().astype(np.float64), lin.bias.detach().numpy().astype(np.float64)
    xf = x.numpy().reshape(4, 12).astype(np.float64)
    z = xf @ W.T + b
    y = z.argmax(axis=-1)
    p = _softmax(z / T)
    grad = (p - np.eye(3)[y]) @ W / T  # d CE(z / T, y) / dx for z = W x + b
    step = np.where(grad >= 0, 1.0, -1.0) / np.repeat(std.numpy().ravel(), 4)
    x2 = xf - eps * step
    want = _softmax((x2 @ W.T + b) / T).max(axis=-1)
    torch.testing.assert_close(odin(model, x, std, T, eps), torch.tensor(want, dtype=torch.float32), atol=1e-7, rtol=1e-6)
    assert all(p.grad is None for p in model.parameters())
    # the input ODIN's second pass sees: the step of the loss at temperature T, not at 1 (whose
    # signs differ here on some pixels; a score alone moves too little to tell them apart)
    seen = []
    odin(lambda v: seen.append(v.detach().clone()) or model(v), x, std, T, eps)
    torch.testing.assert_close(seen[1].double(), torch.tensor(x2.reshape(4, 3, 2, 2)), atol=1e-7, rtol=0)
    at_one = (_softmax(z) - np.eye(3)[y]) @ W
    assert (np.sign(at_one) != np.sign(grad)).any()


def test_odin_under_inference_mode_says_so_and_runs_under_no_grad():
    """Under torch.inference_mode (an evaluation loop's usual context) ODIN stopped in autograd.grad with
    "element 0 of tensors does not require grad and does not have a grad_fn"."""
    lin = torch.nn.Linear(3, 2)
    forward = lambda x: lin(x.flatten(1))  # noqa: E731
    with torch.inference_mode():
        x = torch.rand(2, 3, 1, 1)
        with pytest.raises(RuntimeError, match="call it outside torch.inference_mode"):
            odin(forward, x, torch.ones(3))
    want = odin(forward, x, torch.ones(3))  # an inference tensor made there is fine outside it
    with torch.no_grad():
        torch.testing.assert_close(odin(forward, x, torch.ones(3)), want)


def test_vim_principal_dimension_follows_the_feature_width():
    """The authors' benchmark.py: 1000 for C >= 2048, 512 for C >= 768 (ViT-B-16's 512-d CLIP
    features and ViT-L-14's 768-d ones fall on either side of that edge); C // 2 below 768."""
    assert [S.vim_default_dim(C) for C in (2, 511, 512, 767, 768, 2047, 2048, 4096)] == \
        [1, 255, 256, 383, 512, 512, 1000, 1000]
    g = torch.Generator().manual_seed(0)
    # the fit takes it (at the edges of 2048 too, an eigendecomposition of 2048 x 2048 takes 15 s here)
    for C, want in ((767, 383), (768, 512)):
        N = want + 64  # (more images than the principal space: a residual is left)
        X = torch.randn(N, C, generator=g, dtype=torch.float64)
        W, b = torch.randn(3, C, generator=g, dtype=torch.float64), torch.randn(3, generator=g, dtype=torch.float64)
        fitted = S.vim_fit(X, X @ W.T + b, W, b)
        assert fitted["dim"] == want and fitted["NS"].shape == (C, C - want), C


def test_gl_mcm_is_both_mcms_at_one_temperature():
    g = torch.Generator().manual_seed(2)
    cosine, local = torch.rand(3, 5, generator=g), torch.rand(3, 7, 5, generator=g)
    tau, weight = 0.5, 0.7
    glob = _softmax(cosine.double().numpy() / tau).max(axis=-1)
    loc = _softmax(local.double().numpy() / tau).max(axis=(-2, -1))  # (softmax over classes, max over patches too)
    torch.testing.assert_close(S.gl_mcm(cosine, local, tau, weight).double(), torch.tensor(glob + weight * loc),
                               rtol=1e-6, atol=1e-7)


def test_knn_at_the_edges_of_k_and_of_the_batch():
    """k may be the whole bank (the farthest feature); an empty batch gives an empty score."""
    bank = torch.tensor([[1.0, 0.0], [0.0, 2.0], [-3.0, 0.0]])
    q = torch.tensor([[1.0, 0.0], [0.0, -1.0]])
    # farthest unit neighbours: (-1, 0) at distance 2 from (1, 0); from (0, -1) it is (0, 1), distance 2
    torch.testing.assert_close(S.knn(q, bank, k=3), torch.tensor([-2.0, -2.0]))
    # 2nd nearest: from (1, 0) both others are at sqrt(2) and 2 -> sqrt(2); from (0, -1): sqrt(2)
    torch.testing.assert_close(S.knn(q, bank, k=2), torch.tensor([-math.sqrt(2), -math.sqrt(2)]))
    assert S.knn(torch.zeros(0, 2), bank, k=2).shape == (0,)
    for k in (0, 4):
        with pytest.raises(ValueError, match="k must be in"):
            S.knn(q, bank, k=k)
    # features of another width, or one image without its batch axis (torch's matmul errors before)
    for feats, bk in ((torch.zeros(2, 3), bank), (q[0], bank), (q, bank[0])):
        with pytest.raises(ValueError, match=r"features \[B, C\] and a bank \[N, C\] of the same C"):
            S.knn(feats, bk, k=2)


def test_knn_refuses_a_chunk_below_one_and_a_k_that_is_no_integer():
    """chunk=-1 scored no image (an empty result for a batch of 3), chunk=0 stopped in range(); k=2.0
    passed the range check and stopped in topk with a TypeError."""
    q, bank = torch.randn(3, 4), torch.randn(6, 4)
    for chunk in (0, -1, 1.5):
        with pytest.raises(ValueError, match="chunk must be an integer >= 1"):
            S.knn(q, bank, k=2, chunk=chunk)
    for k in (2.0, True):
        with pytest.raises(ValueError, match=r"k must be in \[1, 6\] \(an integer\)"):
            S.knn(q, bank, k=k)
    torch.testing.assert_close(S.knn(q, bank, k=np.int64(2), chunk=1), S.knn(q, bank, k=2))


def test_knn_of_features_in_the_bank_is_zero_not_nan():
    """A feature's similarity to itself rounds to 1 + 2.4e-7 for 51 of these 200 unit vectors (float32):
    2 - 2 * sim is below 0 there, and its square root would be NaN; the distance is 0 up to rounding."""
    bank = torch.randn(200, 6, generator=torch.Generator().manual_seed(0))
    d = S.knn(bank, bank, k=1)
    assert torch.isfinite(d).all() and d.abs().max() < 1e-3


def test_gradnorm_of_signed_features_uses_their_absolute_values():
    """Features that are not ReLU outputs (negative entries): the gradient's L1 norm takes |h|."""
    torch.manual_seed(0)
    fc = torch.nn.Linear(5, 3)
    h = torch.randn(4, 5)
    assert (h < 0).any()
    want = []
    for i in range(4):
        fc.zero_grad()
        logp = torch.log_softmax(fc(h[i:i + 1]), dim=-1)
        (-(logp / 3).sum()).backward()
        want.append(fc.weight.grad.abs().sum().item())
    torch.testing.assert_close(S.gradnorm(fc(h).detach(), h), torch.tensor(want), rtol=1e-5, atol=1e-6)


def test_gradnorm_and_vim_refuse_features_and_logits_of_other_images():
    """logits [1, K] against features [4, C] (or features [B] against logits [B, K]) broadcast one
    image's term over the others: four scores, silently wrong."""
    u, NS = torch.zeros(5, dtype=torch.float64), torch.eye(5, dtype=torch.float64)[:, :2]
    for feats, logits in ((torch.rand(4, 5), torch.rand(1, 3)), (torch.rand(4), torch.rand(4, 3)),
                          (torch.rand(3, 5), torch.rand(3))):  # (one image's logits, K = B)
        with pytest.raises(ValueError, match=r"features \[B, C\] and logits \[B, K\] must be of the same B"):
            S.gradnorm(logits, feats)
        with pytest.raises(ValueError, match=r"features \[B, C\] and logits \[B, K\] must be of the same B"):
            S.vim(feats, logits, u, NS, 1.0)


def test_vim_and_its_fit_refuse_features_of_another_width_than_the_layer_or_the_fit():
    """Features of 5 against a layer (or a fit) of 4 stopped in a broadcast ("The size of tensor a (5)
    must match the size of tensor b (4)"), features [N] in an IndexError."""
    g = torch.Generator().manual_seed(0)
    X, W, b = torch.randn(30, 5, generator=g), torch.randn(3, 4, generator=g), torch.randn(3, generator=g)
    for feats, weight, bias in ((X, W, b), (X, W, None), (X[:, 0], W, b), (X[:, :4], W, b[:2])):
        with pytest.raises(ValueError, match=r"vim_fit needs train_features \[N, C\] and the final layer's weight"):
            S.vim_fit(feats, torch.randn(30, 3), weight, bias, dim=2)
    fit = S.vim_fit(X[:, :4], X[:, :4] @ W.T + b, W, b, dim=2)
    with pytest.raises(ValueError, match=r"vim's fit is for 4 features, got features of shape \[2, 5\]"):
        S.vim(torch.randn(2, 5), torch.randn(2, 3), fit["u"], fit["NS"], fit["alpha"])
    assert S.vim(torch.randn(2, 4), torch.randn(2, 3), fit["u"], fit["NS"], fit["alpha"]).shape == (2,)


def test_odin_steps_by_plus_one_where_the_gradient_is_zero():
    """The reference code's sign: (g >= 0) * 2 - 1, so a pixel the network ignores (g = 0) moves
    by -eps / std, not +eps / std."""
    lin = torch.nn.Linear(3, 2)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[1.0, 0.0, 0.0], [-1.0, 0.0, 0.0]]))  # channels 1, 2 unused
        lin.bias.zero_()
    model = torch.nn.Sequential(torch.nn.Flatten(), lin)
    x = torch.tensor([0.5, 0.2, -0.3]).view(1, 3, 1, 1)
    std = torch.tensor([0.5, 0.25, 0.2])
    seen = []
    S.odin(lambda v: seen.append(v.detach().clone()) or model(v), x, std, T=1.0, eps=0.01)
    # channel 0: z = (x0, -x0), y = 0, dCE/dx0 = (p0 - 1) - p1 = -2 p1 < 0: step -1; channels 1, 2: g = 0, step +1
    want = torch.tensor([0.5 + 0.01 / 0.5, 0.2 - 0.01 / 0.25, -0.3 - 0.01 / 0.2]).view(1, 3, 1, 1)
    torch.testing.assert_close(seen[1], want, atol=1e-7, rtol=0)


def test_gl_mcm_weights_the_local_term_by_one_by_default():
    cosine = torch.tensor([[0.2, 0.6]])
    local = torch.tensor([[[0.9, 0.1], [0.3, 0.3]]])
    glob = math.exp(0.6) / (math.exp(0.2) + math.exp(0.6))
    loc = math.exp(0.9) / (math.exp(0.9) + math.exp(0.1))
    assert S.gl_mcm(cosine, local).item() == pytest.approx(glob + loc, rel=1e-6)
    assert S.gl_mcm(cosine, local, tau=0.5).item() == pytest.approx(
        1 / (1 + math.exp(-0.8)) + 1 / (1 + math.exp(-1.6)), rel=1e-6)


def test_gl_mcm_refuses_local_cosines_of_another_shape():
    """A [B, K] local matrix (the patch axis forgotten) was maxed to one number added to every
    image's score; a global [1, K] row was added to every image's local score."""
    with pytest.raises(ValueError, match="local_cosine"):
        S.local_mcm(torch.rand(4, 3))
    for cosine, local in ((torch.rand(4, 3), torch.rand(4, 3)), (torch.rand(1, 3), torch.rand(4, 5, 3)),
                          (torch.rand(4, 3), torch.rand(4, 5, 2)), (torch.rand(3), torch.rand(1, 5, 3))):
        with pytest.raises(ValueError, match=r"cosine \[B, K\] and local_cosine \[B, N, K\]"):
            S.gl_mcm(cosine, local)


def test_gradnorm_and_react_move_logits_and_the_layer_to_the_features_device():
    """Logits, or a final layer's weight and bias, on another device than the features stopped in the product
    ("Tensor on device cpu is not on the expected device meta!"); they are moved to the features' device, as
    knn moves its bank. (The meta device stands in for an accelerator: its tensors hold no values.)"""
    features, logits = torch.rand(3, 5, device="meta"), torch.randn(3, 4)
    weight, bias = torch.randn(4, 5), torch.randn(4)
    for out in (S.gradnorm(logits, features), S.react(features, weight, bias, 1.0),
                S.react(features, weight.to("meta"), bias, 1.0), S.react(features, weight, None, 1.0)):
        assert out.device.type == "meta" and out.shape == (3,) and out.dtype == torch.float32


def test_react_clips_only_from_above():
    """ReAct's clip is min(h, c) (the authors' x.clip(max=c)): a feature below -c is left as it is."""
    W = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    h = torch.tensor([[-5.0, 3.0]])
    # clipped at c = 2: (-5, 2); logits (-5, 2); energy log(e^-5 + e^2)
    assert S.react(h, W, None, 2.0).item() == pytest.approx(math.log(math.exp(-5) + math.exp(2)), rel=1e-6)


def test_scores_of_bfloat16_inputs_are_float32_and_exact():
    """Logits and features from an autocast forward are bfloat16; the scores are computed in float32
    from the values they hold (here exact in bfloat16), not rounded to bfloat16's 8-bit mantissa."""
    rows = np.array([[3.0, -1.25, 0.5], [0.0, 2.5, -3.0]])
    h = np.array([[1.0, -2.0 ** -8], [0.5, 0.25]])  # (|1| + |-2^-8| is not a bfloat16: it rounds to 1)
    logits, feats = torch.tensor(rows, dtype=torch.bfloat16), torch.tensor(h, dtype=torch.bfloat16)
    p = _softmax(rows)
    got = {
        "maxlogit": S.maxlogit(logits), "msp": S.msp(logits), "energy": S.energy(logits), "mcm": S.mcm(logits),
        "gradnorm": S.gradnorm(logits, feats),
    }
    want = {
        "maxlogit": rows.max(axis=-1), "msp": p.max(axis=-1), "energy": np.log(np.exp(rows).sum(axis=-1)),
        "mcm": p.max(axis=-1), "gradnorm": np.abs(p - 1 / 3).sum(axis=-1) * np.abs(h).sum(axis=-1),
    }
    for name, score in got.items():
        assert score.dtype == torch.float32, name
        torch.testing.assert_close(score, torch.tensor(want[name], dtype=torch.float32), rtol=1e-6, atol=0, msg=name)
    # KNN of bfloat16 features and bank: h's rows normalised, against the axes
    bank = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.bfloat16)
    q = h / np.linalg.norm(h, axis=1, keepdims=True)
    nearest = np.sort(np.linalg.norm(q[:, None] - np.eye(2)[None], axis=-1), axis=1)[:, 0]
    torch.testing.assert_close(S.knn(feats, bank, k=1), torch.tensor(-nearest, dtype=torch.float32), rtol=1e-6, atol=1e-7)
    # ReAct of bfloat16 features through a float32 layer: clipped at 0.75, (0.75, -2^-8) and (0.5, 0.25)
    W, b = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]), torch.tensor([0.0, 0.5, -1.0])
    z = np.minimum(h, 0.75) @ W.numpy().T + b.numpy()
    got = S.react(feats, W, b, 0.75)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, torch.tensor(np.log(np.exp(z).sum(axis=-1)), dtype=torch.float32), rtol=1e-6, atol=0)
    # ReAct's threshold of bfloat16 features that carry a gradient: 90th percentile of 1 .. 10 = 9.1
    train = torch.arange(1.0, 11.0, dtype=torch.bfloat16).view(2, 5).requires_grad_(True)
    assert S.react_threshold(train, 90.0) == pytest.approx(9.1, abs=1e-6)
    # local MCM of bfloat16 patch cosines: patch 1's (1, 0) is the larger softmax
    local = torch.tensor([[[0.5, -0.25], [1.0, 0.0]]], dtype=torch.bfloat16)
    got = S.local_mcm(local)
    assert got.dtype == torch.float32 and got.item() == pytest.approx(1 / (1 + math.exp(-1)), rel=1e-6)


def test_local_mcm_takes_tau_1_by_default():
    """MCM's temperature, 1 (docs/method.md §4), is local_mcm's default too: patch 0's softmax of
    (0.9, 0.1) is the largest, e^0.9 / (e^0.9 + e^0.1)."""
    local = torch.tensor([[[0.9, 0.1], [0.3, 0.3]]])
    assert S.local_mcm(local).item() == pytest.approx(math.exp(0.9) / (math.exp(0.9) + math.exp(0.1)), rel=1e-6)


def test_vim_with_no_principal_space_takes_the_whole_centred_feature_as_residual():
    """dim = 0 is allowed: NS spans every direction, so the virtual logit is |x - u| itself. At any
    scale of the features: the check for a residual is relative (features of size 1e-8 have one)."""
    rng = np.random.default_rng(3)
    X, W, b = rng.normal(size=(30, 3)), rng.normal(size=(2, 3)), rng.normal(size=2)
    logits = X @ W.T + b
    u = -np.linalg.pinv(W) @ b
    alpha = logits.max(axis=-1).mean() / np.linalg.norm(X - u, axis=-1).mean()
    t = lambda a: torch.tensor(a, dtype=torch.float64)  # noqa: E731
    fit = S.vim_fit(t(X), t(logits), t(W), t(b), dim=0)
    assert fit["dim"] == 0 and fit["NS"].shape == (3, 3) and fit["alpha"] == pytest.approx(alpha, rel=1e-9)
    tiny = S.vim_fit(t(X * 1e-8), t(logits * 1e-8), t(W), t(b * 1e-8), dim=0)  # (u, logits and residual scale too)
    assert tiny["alpha"] == pytest.approx(alpha, rel=1e-6)
    q = rng.normal(size=(4, 3))
    qz = q @ W.T + b
    want = np.log(np.exp(qz).sum(axis=-1)) - alpha * np.linalg.norm(q - u, axis=-1)
    torch.testing.assert_close(S.vim(t(q).float(), t(qz).float(), fit["u"], fit["NS"], fit["alpha"]),
                               torch.tensor(want, dtype=torch.float32), rtol=1e-5, atol=1e-5)


def test_scores_refuse_no_class_or_no_patch_and_react_a_layer_of_another_shape():
    """Logits [B, 0] stopped in amax ("Expected reduction dim -1 to have non-zero size", no argument named)
    in msp, maxlogit, mcm and the local MCM, gave -inf energies and a ZeroDivisionError in GradNorm; react
    multiplied features by a layer of another width ("mat1 and mat2 shapes cannot be multiplied") and
    scored features [C] with a weight [C] as one image."""
    none, feats = torch.zeros(2, 0), torch.ones(2, 4)
    for call in (lambda: S.msp(none), lambda: S.maxlogit(none), lambda: S.energy(none), lambda: S.gradnorm(none, feats)):
        with pytest.raises(ValueError, match=r"logits must hold at least one class \(its last axis\), got shape \[2, 0\]"):
            call()
    with pytest.raises(ValueError, match="cosine must hold at least one class"):
        S.mcm(none)
    with pytest.raises(ValueError, match="local_cosine must hold at least one class"):
        S.local_mcm(torch.zeros(2, 3, 0))
    with pytest.raises(ValueError, match="local_cosine must hold at least one patch"):
        S.local_mcm(torch.zeros(2, 0, 3))
    W = torch.eye(4)
    for h, w, b in ((feats, torch.ones(3, 5), None), (feats, W, torch.ones(2)), (feats[0], W, None),
                    (feats, W[0], None), (feats, torch.zeros(0, 4), None)):
        with pytest.raises(ValueError, match="react needs features"):
            S.react(h, w, b, 1.0)
    # one class is a score: its softmax is 1, its energy the logit
    assert S.msp(torch.tensor([[-3.0]])).item() == 1.0 and S.energy(torch.tensor([[-3.0]])).item() == -3.0


def test_scores_at_a_tiny_temperature_tend_to_the_max_instead_of_overflowing():
    """logits / T overflowed float32 for T below ~1e-38 (1 / 1e-40 is past 3.4e38): energy was inf, MCM
    and ODIN NaN. T logsumexp(x / T) = m + T logsumexp((x - m) / T), m the row max, tends to m as T -> 0;
    the softmax to 1 / (the number of tied maxima) at the maxima."""
    x = torch.tensor([[1.0, 2.0, 3.0], [2.0, 2.0, -1.0], [-math.inf, -math.inf, -math.inf], [math.inf, 0.0, 1.0]])
    # at ordinary T the same values as before: 0.5 log(e^0 + e^(2 log 3)) = 0.5 log 10
    assert S.energy(torch.tensor([[0.0, math.log(3.0)]]), 0.5).item() == pytest.approx(0.5 * math.log(10.0), rel=1e-6)
    assert S.mcm(torch.tensor([[0.0, math.log(3.0)]]), 0.5).item() == pytest.approx(0.9, rel=1e-6)
    for T in (1e-40, 1e-46, 5e-324):  # (float32 subnormal, float32 zero, the smallest float)
        assert S.energy(x, T).tolist() == [3.0, 2.0, -math.inf, math.inf]
        assert S.mcm(x[:2], T).tolist() == [1.0, 0.5]
        local = torch.tensor([[[0.1, 0.3], [0.2, 0.2]]])  # patch maxima 1 and 1 / 2
        assert S.local_mcm(local, T).item() == 1.0 and S.gl_mcm(local[:, 1], local, T).item() == 1.5
    # ODIN: the softmax of the argmax is exactly 1, so the loss's gradient is 0 and the step +1 everywhere
    torch.manual_seed(1)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3)).eval()
    xs, std, seen = torch.randn(4, 3, 2, 2), torch.tensor([0.2, 0.3, 0.4]), []
    got = odin(lambda v: seen.append(v.detach().clone()) or model(v), xs, std, T=1e-40, eps=0.01)
    assert got.tolist() == [1.0] * 4
    torch.testing.assert_close(seen[1], xs - 0.01 / std.view(1, 3, 1, 1))


def test_odin_refuses_a_std_of_zero_or_below_and_a_step_below_zero():
    """A std of 0 divided the step to inf pixels: every score NaN; a negative std, or a negative eps,
    stepped with the loss instead of against it; a std of another length stopped in a broadcast."""
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3))
    x = torch.rand(2, 3, 2, 2)
    for std in (torch.tensor([0.2, 0.0, 0.4]), torch.tensor([0.2, -0.3, 0.4]), torch.tensor([0.2, math.nan, 0.4]),
                torch.tensor([math.inf] * 3), 0.0):
        with pytest.raises(ValueError, match="std must be finite and > 0"):
            odin(model, x, std)
    with pytest.raises(ValueError, match=r"std must hold one value per channel of x \(3\)"):
        odin(model, x, torch.ones(2))
    for eps in (-0.0014, math.nan, math.inf, True):
        with pytest.raises(ValueError, match="eps must be finite and >= 0"):
            odin(model, x, torch.ones(3), eps=eps)
    with pytest.raises(ValueError, match=r"odin takes normalised images x \[B, C, H, W\]"):
        odin(torch.nn.Linear(3, 2), torch.rand(2, 3), torch.ones(3))
    # one number is every channel's std; eps 0 is no step: the MSP at temperature T
    want = (model(x) / 1000.0).softmax(dim=-1).amax(dim=-1)
    torch.testing.assert_close(odin(model, x, 0.5, eps=0.0), want.detach())


def test_settings_refuse_a_bool_or_what_is_no_number():
    """True is an int to Python: energy(logits, True) was the energy at T = 1, mcm's tau and ODIN's T the same,
    vim_fit's dim=True one principal direction, fpr_at_tpr's tpr=True the FPR at 100% TPR. None or a string
    stopped in the comparison ("'>' not supported between instances of 'NoneType' and 'int'")."""
    from clip_smot.metrics import fpr_at_tpr

    logits, local = torch.tensor([[1.0, 2.0]]), torch.rand(1, 2, 2)
    for bad in (True, np.True_, None, "1"):
        for name, call in (("temperature", lambda: S.energy(logits, bad)), ("tau", lambda: S.mcm(logits, bad)),
                           ("tau", lambda: S.local_mcm(local, bad)), ("tau", lambda: S.gl_mcm(logits, local, bad)),
                           ("T", lambda: odin(lambda v: v.flatten(1), torch.rand(1, 3, 1, 1), torch.ones(3), T=bad)),
                           ("eps", lambda: odin(lambda v: v.flatten(1), torch.rand(1, 3, 1, 1), torch.ones(3), eps=bad)),
                           ("dim", lambda: S.vim_fit(torch.rand(6, 3), torch.rand(6, 2), torch.rand(2, 3), None,
                                                     dim=bad if bad is not None else "1")),  # (None: the default)
                           ("tpr", lambda: fpr_at_tpr([1.0, 2.0], [0.0], tpr=bad))):
            with pytest.raises(ValueError, match=f"^{name} must be "):
                call()
    with pytest.raises(ValueError, match="^dim must be "):
        S.vim_fit(torch.rand(6, 3), torch.rand(6, 2), torch.rand(2, 3), None, dim=1.0)
    # numpy numbers and one-element tensors are numbers
    assert S.energy(logits, np.float32(1.0)).item() == S.energy(logits, torch.tensor(1.0)).item() == S.energy(logits).item()



def test_knn_of_an_empty_bank_says_so():
    """An empty bank was answered "k must be in [1, 0] (an integer), got 1", as if k were wrong."""
    with pytest.raises(ValueError, match="knn needs ID-train features: the bank is empty"):
        S.knn(torch.rand(2, 3), torch.zeros(0, 3), k=1)


def test_scores_name_an_argument_that_is_no_tensor():
    """A numpy array where a tensor is read stopped on "'numpy.ndarray' object has no attribute 'float'"."""
    a, T = np.random.rand(2, 3).astype(np.float32), torch.rand(2, 3)
    for name, call in (("logits", lambda: S.msp(a)), ("logits", lambda: S.maxlogit(a)), ("logits", lambda: S.energy(a.tolist())),
                       ("cosine", lambda: S.mcm(a)), ("train_features", lambda: S.react_threshold(a)),
                       ("weight", lambda: S.react(T, a, None, 1.0)), ("bank", lambda: S.knn(T, a, 1)),
                       ("train_logits", lambda: S.vim_fit(T, a, T, None)), ("NS", lambda: S.vim(T, T, torch.zeros(3), a, 1.0)),
                       ("features", lambda: S.gradnorm(T, a)), ("x", lambda: odin(lambda v: v, a[None, None], 1.0)),
                       ("local_cosine", lambda: S.local_mcm(a[None])), ("local_cosine", lambda: S.gl_mcm(T, a[None]))):
        with pytest.raises(TypeError, match=f"^{name} must be a torch.Tensor, got (list|ndarray)$"):
            call()


def test_odin_refuses_integer_images():
    """uint8 or int64 images stopped in requires_grad_ ("only Tensors of floating point dtype can require
    gradients"), naming no argument: ODIN takes normalised float images."""
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3))
    for dtype in (torch.uint8, torch.int64):
        with pytest.raises(TypeError, match=f"odin takes normalised float images x, got {dtype}"):
            odin(model, torch.zeros(2, 3, 2, 2, dtype=dtype), torch.ones(3))


def test_an_optional_bias_that_is_no_tensor_is_named():
    """bias may be None (a layer without one), but a numpy bias is still no tensor: it stopped on
    "'numpy.ndarray' object has no attribute 'float'" (react) or "... 'detach'" (vim_fit)."""
    h, W, b = torch.rand(2, 3), torch.rand(4, 3), np.zeros(4, dtype=np.float32)
    for call in (lambda: S.react(h, W, b, 1.0), lambda: S.vim_fit(h, torch.rand(2, 4), W, b)):
        with pytest.raises(TypeError, match="^bias must be a torch.Tensor, got ndarray$"):
            call()


def test_settings_refuse_a_tensor_of_several_values_a_bool_or_a_complex_one():
    """A setting read from a tensor must be one real number: a [2] temperature stopped in ``not value > 0``
    ("Boolean value of Tensor with more than one value is ambiguous"), tensor(True) would be T = 1."""
    logits = torch.tensor([[1.0, 2.0]])
    for bad in (torch.tensor([1.0, 2.0]), torch.tensor(True), torch.tensor(1.0 + 0j)):
        with pytest.raises(ValueError, match="^temperature must be > 0"):
            S.energy(logits, bad)
        with pytest.raises(ValueError, match="^eps must be finite"):
            odin(lambda v: v.flatten(1), torch.rand(1, 3, 1, 1), torch.ones(3), eps=bad)


def test_vim_refuses_training_features_that_all_sit_at_its_origin():
    """Features all at ViM's origin u (here zeros, e.g. a dead ReLU layer, and no bias: u = 0) have no
    residual at all, 0 of 0: alpha = mean max logit / 0 would be infinite."""
    W = torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0]])
    X = torch.zeros(10, 4)
    with pytest.raises(ValueError, match="leave no residual"):
        S.vim_fit(X, X @ W.T, W, None, dim=2)


def test_vim_fits_a_small_but_real_residual():
    """The no-residual check compares the residual with the size of the centred features, image by image
    (mean of |x - u|); a real residual 1e-5 of that is fitted, with ViM's alpha (Wang et al., 2022,
    ``mean max logit / mean |(x - u) NS|``). Here the residual space is the last two axes, u = 0."""
    g = torch.Generator().manual_seed(0)
    N = 2000
    X = torch.randn(N, 4, generator=g, dtype=torch.float64) * torch.tensor([1.0, 1.0, 1e-5, 1e-5], dtype=torch.float64)
    W = torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0]], dtype=torch.float64)
    fit = S.vim_fit(X, X @ W.T, W, None, dim=2)
    residual = X[:, 2:].norm(dim=-1).mean().item()  # |x NS| with NS the last two axes
    assert fit["alpha"] == pytest.approx((X @ W.T).amax(dim=-1).mean().item() / residual, rel=0.02)


def test_scores_at_a_tiny_temperature_are_float32_too():
    """Below float32's range the shift is divided in float64 (``_over``), and energy adds T * lse in
    float64; the scores are still float32, as at any other temperature (the first row's max is 3, the
    second's two tied maxima share the softmax)."""
    x = torch.tensor([[1.0, 2.0, 3.0], [2.0, 2.0, -1.0]])
    for T in (1e-40, 5e-324):
        got = {"energy": S.energy(x, T), "mcm": S.mcm(x, T), "local_mcm": S.local_mcm(x[None], T)}
        for name, score in got.items():
            assert score.dtype == torch.float32, (name, T)
        assert got["energy"].tolist() == [3.0, 2.0] and got["mcm"].tolist() == [1.0, 0.5]


def test_react_of_a_float64_layer():
    """The final layer may be float64 (a fit kept in double); the features are float32: the product is
    taken in float32, as for a float32 layer, not stopped on "expected m1 and m2 to have the same dtype".
    Clipped at 1: (1, 0.5) through W = I and b = (0, 1) gives logits (1, 1.5)."""
    h = torch.tensor([[3.0, 0.5]])
    W, b = torch.eye(2, dtype=torch.float64), torch.tensor([0.0, 1.0], dtype=torch.float64)
    got = S.react(h, W, b, 1.0)
    assert got.dtype == torch.float32
    assert got.item() == pytest.approx(math.log(math.exp(1.0) + math.exp(1.5)), rel=1e-6)


def test_vim_fit_of_a_layers_parameters_keeps_no_graph():
    """vim_fit(feats, logits, fc.weight, fc.bias) takes parameters that require a gradient, maybe features
    that do: the fit (u, NS) is data to save and reuse, with no autograd graph behind it."""
    torch.manual_seed(0)
    fc = torch.nn.Linear(6, 3)
    X = torch.randn(40, 6, requires_grad=True)
    fit = S.vim_fit(X, fc(X), fc.weight, fc.bias, dim=3)
    for name in ("u", "NS"):
        assert not fit[name].requires_grad and fit[name].grad_fn is None, name


def test_vim_fit_refuses_logits_of_other_images_or_another_layer():
    """ViM's alpha is the mean max logit of the training images over their mean residual (Wang et al.,
    2022): logits of 7 of the 30 images, of a 5-class layer against a 3-class one, or [N] logits gave
    another alpha and no error. The shapes are named."""
    g = torch.Generator().manual_seed(0)
    X, W, b = torch.randn(30, 4, generator=g), torch.randn(3, 4, generator=g), torch.randn(3, generator=g)
    logits = X @ W.T + b  # [30, 3]
    for bad in (logits[:7], torch.randn(30, 5, generator=g), logits[:, 0], logits[None]):
        with pytest.raises(ValueError, match=rf"^vim_fit needs train_logits \[N, K\] of its N = 30 training images "
                                             rf"and the layer's K = 3 classes, got shape \[{', '.join(map(str, bad.shape))}\]$"):
            S.vim_fit(X, bad, W, b, dim=2)
    assert math.isfinite(S.vim_fit(X, logits, W, b, dim=2)["alpha"])


def test_energy_at_a_temperature_past_float32s_range():
    """T logsumexp(x / T) of one class is x at any T (log exp(x / T) = x / T); for 1e39 or 1e300, finite
    Python floats, energy was NaN. At T = inf the same limit x (or a ValueError naming temperature)."""
    logits = torch.tensor([[3.0], [-2.0]])
    for T in (1e39, 1e300):
        assert S.energy(logits, T).tolist() == [3.0, -2.0]
    try:
        got = S.energy(logits, math.inf)
    except ValueError as e:
        assert "temperature" in str(e)
    else:
        assert got.tolist() == [3.0, -2.0]


def test_msp_of_float64_logits_past_float32s_range():
    """softmax([1e300, 0]) is [1, exp(-1e300)]: the MSP is 1 (and 1/2 for two equal logits), not NaN."""
    logits = torch.tensor([[1e300, 0.0], [1e300, 1e300], [5.0, -1e300]], dtype=torch.float64)
    assert S.msp(logits).tolist() == [1.0, 0.5, 1.0]
    assert S.msp(logits).dtype == torch.float32  # (computed in float64, returned as every score is)


def test_knn_of_an_all_zero_feature_or_bank_row_against_brute_force_distances():
    """A ReLU feature can be all zero (a black, fully masked image). F.normalize leaves it zero, and as in the
    KNN paper's code (x / (|x| + 1e-10), then L2 distances) it lies at distance 1 from every unit vector; the
    dot-product shortcut put it at sqrt(2), and so ranked it behind neighbours at distances between 1 and
    sqrt(2). Either the brute-force distance or a ValueError naming the zero row."""
    bank = torch.tensor([[1.0, 0.0], [0.0, 0.0], [-1.0, 0.0]])
    q = torch.tensor([[0.0, 1.0], [0.0, 0.0]])
    nb = torch.nn.functional.normalize(bank, dim=-1).numpy()
    nq = torch.nn.functional.normalize(q, dim=-1).numpy()
    want = [-np.sort(np.sqrt(((nb - v) ** 2).sum(axis=1)))[0] for v in nq]  # nearest: 1 and 0 (the zero row)
    assert want == [-1.0, 0.0]
    try:
        got = S.knn(q, bank, k=1)
    except ValueError as e:
        assert "zero" in str(e)
    else:
        torch.testing.assert_close(got, torch.tensor(want, dtype=torch.float32))


def test_react_refuses_a_threshold_that_is_no_number():
    """As the temperatures (test_settings_refuse_a_bool_or_what_is_no_number): a ValueError naming threshold.
    NaN clipped every activation to NaN, so each score came back NaN; None stopped on "torch.clamp: At least
    one of 'min' or 'max' must not be None"; True was a threshold of 1."""
    h, W = torch.tensor([[5.0, 0.0]]), torch.eye(2)
    for bad in (math.nan, None, True, "1"):
        with pytest.raises(ValueError, match="threshold"):
            S.react(h, W, None, bad)


def test_gl_mcm_refuses_a_local_weight_that_is_no_number():
    """As tau: a ValueError naming local_weight. NaN gave NaN scores for finite cosines; None stopped on
    "unsupported operand type(s) for *: 'NoneType' and 'Tensor'"."""
    cosine, local = torch.tensor([[0.2, -0.1]]), torch.tensor([[[0.3, 0.1], [0.0, 0.2]]])
    for bad in (math.nan, None, "1"):
        with pytest.raises(ValueError, match="local_weight"):
            S.gl_mcm(cosine, local, local_weight=bad)


def test_vim_refuses_an_alpha_that_is_no_number():
    """alpha comes from vim_fit, but vim is public: NaN gave NaN scores for finite features; None stopped on
    "unsupported operand type(s) for *: 'NoneType' and 'Tensor'". A ValueError naming alpha."""
    feats, logits = torch.tensor([[1.0, 2.0]]), torch.tensor([[0.5, -0.5]])
    u, NS = torch.zeros(2, dtype=torch.float64), torch.tensor([[0.0], [1.0]], dtype=torch.float64)
    for bad in (math.nan, None, "1"):
        with pytest.raises(ValueError, match="alpha"):
            S.vim(feats, logits, u, NS, bad)


def test_react_threshold_refuses_a_percentile_that_is_no_number():
    """The other settings refuse a bool (True is an int to Python): react_threshold(train, True) was the 1st
    percentile, 1.0 of the activations 0 .. 100; None stopped on "unsupported operand type(s) for /:
    'NoneType' and 'int'". A ValueError naming percentile."""
    train = torch.arange(101.0).view(1, -1)
    for bad in (True, None):
        with pytest.raises(ValueError, match="percentile"):
            S.react_threshold(train, bad)


def test_react_threshold_takes_percentiles_0_to_100_inclusive():
    """The 0th and 100th percentiles of the activations 0 .. 100 are 0 and 100 (the smallest and the
    largest); outside [0, 100], or NaN, the ValueError names the setting (numpy's own was "Percentiles must
    be in the range [0, 100]")."""
    train = torch.arange(101.0).view(1, -1)
    assert S.react_threshold(train, 0) == 0.0 and S.react_threshold(train, 100) == 100.0
    for bad in (-0.5, 100.5, math.nan):
        with pytest.raises(ValueError, match=r"percentile must be a number in \[0, 100\]"):
            S.react_threshold(train, bad)


def test_scores_refuse_complex_logits_and_cosines():
    """ood_metrics refuses complex scores ("not complex numbers") and the settings a complex tensor; the scores
    themselves took the real part: maxlogit of [[1 + 2j, 0]] was 1. A TypeError or ValueError naming the
    argument."""
    z = torch.tensor([[1 + 2j, 0j]])
    for name, call in (("logits", lambda: S.msp(z)), ("logits", lambda: S.maxlogit(z)),
                       ("logits", lambda: S.energy(z)), ("cosine", lambda: S.mcm(z)),
                       ("local_cosine", lambda: S.local_mcm(z[None])),
                       ("logits", lambda: S.gradnorm(z, torch.ones(1, 2)))):
        with pytest.raises((TypeError, ValueError), match=name):
            call()


def test_vim_fit_names_non_finite_training_features_logits_or_bias():
    """NaN training logits gave alpha NaN, so every ViM score later was NaN; a NaN feature or bias stopped on
    torch's _LinAlgError "linalg.eigh: The algorithm failed to converge because the input matrix is
    ill-conditioned". A ValueError naming the argument."""
    rng = np.random.default_rng(0)
    X, W = torch.tensor(rng.normal(size=(30, 6))), torch.tensor(rng.normal(size=(3, 6)))
    nan_x = X.clone()
    nan_x[0, 0] = math.nan
    for name, args in (("train_logits", (X, torch.full((30, 3), math.nan), W, None)),
                       ("train_features", (nan_x, X @ W.T, W, None)),
                       ("bias", (X, X @ W.T, W, torch.tensor([math.nan, 0.0, 0.0]))),
                       ("weight", (X, X @ W.T, torch.where(W > 0, W, math.inf), None))):
        with pytest.raises(ValueError, match=name):
            S.vim_fit(*args, dim=2)


def test_knn_refuses_a_bank_with_a_non_finite_row():
    """Bank (1, 0), (NaN, 0), (0, 1), (-1, 0) and the query (1, 0): the 2nd nearest finite neighbour is (0, 1)
    at sqrt(2), but knn(k=2) was -0 (the nearest, (1, 0) itself) and k=1 NaN. A ValueError naming the bank."""
    bank = torch.tensor([[1.0, 0.0], [math.nan, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    with pytest.raises(ValueError, match="bank"):
        S.knn(torch.tensor([[1.0, 0.0]]), bank, k=2)


def test_react_threshold_refuses_non_finite_training_features():
    """numpy's percentile of [1, NaN, 3] is NaN, and of [1, inf, 3] at 50 interpolates inf - inf to NaN; react
    then clips every activation to NaN. A ValueError naming train_features."""
    for bad in (math.nan, math.inf):
        with pytest.raises(ValueError, match="train_features"):
            S.react_threshold(torch.tensor([[1.0, bad, 3.0]]), 50.0)
