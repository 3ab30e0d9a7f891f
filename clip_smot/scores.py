"""OOD scores from logits or cosine similarities -> [B], higher = more in-distribution.

These functions only look at the tensors they are given, except ODIN, which runs the
network it is given as a callable (the evaluation code of both tracks passes its own). Scores
with statistics fitted on ID training features take them as arguments: ReAct (the clipping
threshold, :func:`react_threshold`), KNN (the normalised feature bank) and ViM
(:func:`vim_fit`). The paper gives no ODIN, ReAct or KNN settings: the defaults below are the
methods' own papers' (ODIN's T and eps, ReAct's 90th percentile, KNN's CIFAR k = 50), the same
for both tracks (docs/method.md §4). torch and numpy only.
"""

from __future__ import annotations

import math
import numbers
from typing import Callable

import torch

__all__ = ["KNN_K", "ODIN_EPS", "ODIN_T", "REACT_PERCENTILE", "SCORES", "energy", "gl_mcm", "gradnorm", "knn",
           "local_mcm", "maxlogit", "mcm", "msp", "odin", "react", "react_threshold", "vim", "vim_default_dim",
           "vim_fit"]

ODIN_T, ODIN_EPS = 1000.0, 0.0014  # ODIN's temperature and input step
REACT_PERCENTILE = 90.0  # ReAct's clipping threshold: this percentile of the ID-train activations
KNN_K = 50  # KNN's neighbour rank


def _tensors(optional: tuple[str, ...] = (), **named) -> None:
    """Refuse what is no tensor where one is read: a numpy array or a list stopped on a missing attribute
    ("'numpy.ndarray' object has no attribute 'float'"), naming no argument. ``optional`` ones may be None."""
    for name, value in named.items():
        if not isinstance(value, torch.Tensor) and not (value is None and name in optional):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
        if isinstance(value, torch.Tensor) and value.is_complex():  # (.float() kept the real part, with a warning
            raise TypeError(f"{name} must hold real numbers, got {value.dtype}")  # once a process)


def _real(value) -> bool:
    """Whether ``value`` is a real number to check a setting against: a Python or numpy number but no
    bool (True is an int to Python, read as 1), or a one-element real tensor. (None or a string stopped in
    the comparison, with an error naming no argument; numpy's True was read as 1.)"""
    if isinstance(value, torch.Tensor):
        return value.numel() == 1 and value.dtype != torch.bool and not value.is_complex()
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _positive(name: str, value: float) -> None:
    # (0 divides to NaN; a negative temperature turns the max-like score into a min-like one; an infinite one
    # made the energy inf * 0, NaN)
    if not _real(value) or not 0 < value < math.inf:
        raise ValueError(f"{name} must be > 0 and finite, got {value!r}")


def _finite(name: str, value: float) -> None:
    """Refuse a setting that is no finite real number (NaN made every score NaN; None or a string stopped
    in an operation naming no argument; True was read as 1)."""
    if not _real(value) or not math.isfinite(float(value)):
        raise ValueError(f"{name} must be a finite number, got {value!r}")


def _finite_values(name: str, t: torch.Tensor) -> None:
    """Refuse a tensor of fitted statistics holding NaN or inf: a NaN row of a KNN bank ranked first in
    topk, a NaN activation made ReAct's percentile NaN, ViM's alpha or eigenvectors NaN."""
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} must hold finite numbers, got {int((~torch.isfinite(t)).sum())} NaN or inf")


def _classes(name: str, scores: torch.Tensor) -> None:
    """Refuse scores over no class (the last axis empty): their max stopped in amax ("Expected reduction
    dim -1 to have non-zero size"), their energy was -inf, GradNorm divided by K = 0."""
    if scores.ndim and scores.shape[-1] == 0:
        raise ValueError(f"{name} must hold at least one class (its last axis), got shape {list(scores.shape)}")


def _over(scores: torch.Tensor, T: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(scores - m) / T`` in float32 and ``m``, each row's largest score ([..., 1], detached;
    float64 for float64 scores, else float32).

    Softmax and log-sum-exp are the same of ``scores / T`` and of it less a constant per row:
    ``T logsumexp(x / T) = m + T logsumexp((x - m) / T)``. ``x / T`` itself overflowed float32 at
    a tiny T (x / 1e-40 is past 3.4e38: an infinite energy, a NaN MCM); ``(x - m) / T`` is at most 0.
    Divided in float64 for a T below float32's range, where 0 / T would be 0 / 0, and for float64
    scores, shifted before their cast (logits of 1e300 were inf in float32, and their softmax NaN).
    """
    x = scores.double() if scores.dtype == torch.float64 else scores.float()
    m = x.detach().amax(dim=-1, keepdim=True)  # [..., 1]
    m = torch.where(m.isfinite(), m, 0.0)  # (a row of -inf, or with inf or NaN: not shifted, inf - inf is NaN)
    if T < torch.finfo(torch.float32).tiny or x.dtype == torch.float64:
        return ((x.double() - m) / T).float(), m
    return (x - m) / T, m


def msp(logits: torch.Tensor) -> torch.Tensor:
    """Maximum softmax probability (Hendrycks & Gimpel, 2017)."""
    _tensors(logits=logits)
    _classes("logits", logits)
    return _over(logits, 1.0)[0].softmax(dim=-1).amax(dim=-1)


def maxlogit(logits: torch.Tensor) -> torch.Tensor:
    """Largest logit (Hendrycks et al., 2022)."""
    _tensors(logits=logits)
    _classes("logits", logits)
    return logits.float().amax(dim=-1)


def energy(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Negative free energy ``T * logsumexp(logits / T)`` (Liu et al., 2020)."""
    _tensors(logits=logits)
    _positive("temperature", temperature)
    _classes("logits", logits)
    z, m = _over(logits, temperature)  # [B, K], [B, 1]
    lse = torch.logsumexp(z, dim=-1)  # [B]
    # (in float64: a T below float32's range is 0 there, and T * -inf was NaN; one past it is inf, and
    # T * 0, of a single class, was NaN)
    return (m[..., 0].double() + temperature * lse.double()).float()


def mcm(cosine: torch.Tensor, tau: float = 1.0) -> torch.Tensor:
    """Maximum concept matching (Ming et al., 2022): max softmax of ``cos(image, text) / tau``.

    Takes cosine similarities in [-1, 1], not logits scaled by CLIP's ``logit_scale``.
    """
    _tensors(cosine=cosine)
    _positive("tau", tau)
    _classes("cosine", cosine)
    return _over(cosine, tau)[0].softmax(dim=-1).amax(dim=-1)


def react_threshold(train_features: torch.Tensor, percentile: float = REACT_PERCENTILE) -> float:
    """ReAct's clipping threshold: the ``percentile`` of all ID-train penultimate activations.

    numpy's percentile (linear interpolation) over every element of ``train_features`` [N, C].
    """
    _tensors(train_features=train_features)
    import numpy as np

    if train_features.numel() == 0:  # (numpy's percentile of nothing is an IndexError)
        raise ValueError("react_threshold needs training features: none were given")
    # (numpy read True as the 1st percentile; None stopped in numpy naming no argument)
    if not _real(percentile) or not 0 <= percentile <= 100:
        raise ValueError(f"percentile must be a number in [0, 100], got {percentile!r}")
    _finite_values("train_features", train_features)
    return float(np.percentile(train_features.detach().float().cpu().numpy().ravel(), percentile))


def react(features: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, threshold: float) -> torch.Tensor:
    """ReAct (Sun et al., 2021): energy of the logits of features clipped at ``threshold``.

    Args:
        features: penultimate (pooled) features [B, C].
        weight, bias: the final linear layer, [K, C] and [K].
        threshold: from :func:`react_threshold` on ID training features.
    """
    _tensors(("bias",), features=features, weight=weight, bias=bias)
    # (a layer of another width stopped in the product, "mat1 and mat2 shapes cannot be multiplied"; a bias of
    # another K in a broadcast; a weight [C] gave one logit per image, features [C] one score)
    if (features.ndim != 2 or weight.ndim != 2 or weight.shape[1] != features.shape[1] or weight.shape[0] == 0
            or (bias is not None and bias.shape != weight.shape[:1])):
        raise ValueError(f"react needs features [B, C] and the final layer's weight [K, C] (K >= 1) and bias [K] of "
                         f"the same C and K, got shapes {list(features.shape)}, {list(weight.shape)} and "
                         f"{None if bias is None else list(bias.shape)}")
    _finite("threshold", threshold)
    clipped = features.float().clamp(max=float(threshold))  # [B, C]
    # (a layer on another device than the features stopped in the product: moved, as knn moves its bank)
    logits = clipped @ weight.to(clipped.device, torch.float32).T  # [B, K]
    if bias is not None:
        logits = logits + bias.to(clipped.device, torch.float32)
    return energy(logits)


def knn(features: torch.Tensor, bank: torch.Tensor, k: int = KNN_K, chunk: int = 1024) -> torch.Tensor:
    """KNN (Sun et al., 2022): minus the distance to the k-th nearest ID-train feature.

    Both ``features`` [B, C] and ``bank`` [N, C] are L2-normalised here (a row of zeros stays
    zero, as ``x / (|x| + 1e-10)`` of the KNN paper's code leaves it) and their distances are
    ``|a - b|^2 = |a|^2 + |b|^2 - 2 a.b``: for unit vectors ``2 - 2 a.b``, and a zero row is at 1
    from every unit vector (the shortcut ``sqrt(2 - 2 a.b)`` put it at sqrt(2)). ``bank`` must be
    finite (a NaN row ranked first).
    """
    _tensors(features=features, bank=bank)
    if features.ndim != 2 or bank.ndim != 2 or features.shape[1] != bank.shape[1]:
        raise ValueError(f"knn needs features [B, C] and a bank [N, C] of the same C, got shapes "
                         f"{list(features.shape)} and {list(bank.shape)}")
    if bank.shape[0] == 0:  # (was "k must be in [1, 0]", whatever k)
        raise ValueError("knn needs ID-train features: the bank is empty")
    _finite_values("bank", bank)
    if isinstance(k, bool) or not isinstance(k, numbers.Integral) or not 1 <= k <= bank.shape[0]:
        raise ValueError(f"k must be in [1, {bank.shape[0]}] (an integer), got {k!r}")
    # (a chunk below 1 scored no image: an empty result for any batch, or range()'s error for 0)
    if isinstance(chunk, bool) or not isinstance(chunk, numbers.Integral) or chunk < 1:
        raise ValueError(f"chunk must be an integer >= 1, got {chunk!r}")
    q = torch.nn.functional.normalize(features.float(), dim=-1)
    b = torch.nn.functional.normalize(bank.float().to(q.device), dim=-1)
    b_sq = (b * b).sum(dim=-1)  # [N]: 1, or 0 for a zero row
    out = []
    for i in range(0, q.shape[0], chunk):
        qi = q[i:i + chunk]  # [b, C]
        d_sq = (qi * qi).sum(dim=-1, keepdim=True) + b_sq - 2 * (qi @ b.T)  # [b, N]
        kth = d_sq.topk(k, dim=-1, largest=False).values[:, -1]  # [b]: k-th smallest squared distance
        out.append(-torch.sqrt(kth.clamp_min(0)))
    return torch.cat(out) if out else q.new_zeros(0)


def vim_default_dim(C: int) -> int:
    """ViM's principal dimension for ``C`` features: 1000 for C >= 2048 and 512 for C >= 768 (the
    authors' ``benchmark.py``: 1000 for C >= 2048, else 512), C // 2 below 768 (our choice: 512
    would leave little or no residual space, none for ResNet-18's 512 features, and ViM would
    reduce to Energy)."""
    return 1000 if C >= 2048 else 512 if C >= 768 else C // 2


def vim_fit(train_features: torch.Tensor, train_logits: torch.Tensor, weight: torch.Tensor,
            bias: torch.Tensor | None, dim: int | None = None) -> dict[str, torch.Tensor | float | int]:
    """Fit ViM (Wang et al., 2022) on ID training features, as the authors' code does.

    * origin ``u = -pinv(W) b`` (0 for a layer without bias, ``bias=None``, as :func:`react` takes);
    * principal space: the ``dim`` leading eigenvectors of ``(X - u)^T (X - u) / N``; its
      complement ``NS`` [C, C - dim] spans the residual;
    * ``alpha = mean(max train logit) / mean(|(X - u) NS|)``.

    ``dim`` defaults to :func:`vim_default_dim` of the feature width.

    Returns:
        {"u": [C], "NS": [C, C - dim], "alpha": float, "dim": int}, float64 tensors on the CPU.

    Raises:
        ValueError: shapes that do not fit (``train_logits`` not [N, K] of the same N images and the
            layer's K classes); ``dim`` is negative or leaves no residual space (``dim >= C``); or the
            training features have no residual outside the principal space (at most ``dim``
            distinct images): alpha would divide by rounding noise.
    """
    _tensors(("bias",), train_features=train_features, train_logits=train_logits, weight=weight, bias=bias)
    # (features of another width than the layer's stopped in a broadcast, "The size of tensor a (5) must
    # match the size of tensor b (4)"; features [N] in an IndexError)
    if (train_features.ndim != 2 or weight.ndim != 2 or weight.shape[1] != train_features.shape[1]
            or (bias is not None and bias.shape != weight.shape[:1])):
        raise ValueError(f"vim_fit needs train_features [N, C] and the final layer's weight [K, C] and bias [K] of "
                         f"the same C and K, got shapes {list(train_features.shape)}, {list(weight.shape)} and "
                         f"{None if bias is None else list(bias.shape)}")
    # (logits of other images or of another layer gave another alpha, silently: the mean max logit of 7 rows
    # over the residual of 30 images)
    if train_logits.shape != (train_features.shape[0], weight.shape[0]):
        raise ValueError(f"vim_fit needs train_logits [N, K] of its N = {train_features.shape[0]} training images "
                         f"and the layer's K = {weight.shape[0]} classes, got shape {list(train_logits.shape)}")
    for name, t in (("train_features", train_features), ("train_logits", train_logits), ("weight", weight),
                    ("bias", bias)):
        if t is not None:
            _finite_values(name, t)
    X = train_features.detach().double().cpu()  # [N, C]
    C = X.shape[1]
    if dim is None:
        dim = vim_default_dim(C)
    # (a negative dim sliced the eigenvectors from the other end, 2.5 stopped in the slice, True was 1)
    elif isinstance(dim, bool) or not isinstance(dim, numbers.Integral) or not 0 <= dim < C:
        raise ValueError(f"dim must be in [0, {C - 1}] for {C} features, got {dim!r} (an integer)")
    if bias is None:  # (nn.Linear(..., bias=False).bias)
        bias = torch.zeros(weight.shape[0])
    u = -torch.linalg.pinv(weight.detach().double().cpu()) @ bias.detach().double().cpu()  # [C]
    Xc = X - u  # [N, C]
    cov = Xc.T @ Xc / X.shape[0]  # [C, C]
    evals, evecs = torch.linalg.eigh(cov)  # ascending
    order = torch.argsort(evals, descending=True)
    NS = evecs[:, order[dim:]]  # [C, C - dim]
    vlogit = torch.linalg.vector_norm(Xc @ NS, dim=-1)  # [N]
    if not vlogit.mean() > 1e-6 * torch.linalg.vector_norm(Xc, dim=-1).mean():  # N <= dim: zero up to rounding
        raise ValueError(f"vim needs more (and more varied) training images than its principal dimension {dim} "
                         f"(of {C} features): the {X.shape[0]} given leave no residual")
    alpha = float(train_logits.detach().double().cpu().amax(dim=-1).mean() / vlogit.mean())
    return {"u": u, "NS": NS, "alpha": alpha, "dim": int(dim)}


def _same_images(features: torch.Tensor, logits: torch.Tensor) -> None:
    """Refuse features [B, C] and logits [B, K] of different images: their per-image terms would broadcast."""
    if features.ndim != 2 or logits.ndim != 2 or features.shape[0] != logits.shape[0]:
        raise ValueError(f"features [B, C] and logits [B, K] must be of the same B images, got shapes "
                         f"{list(features.shape)} and {list(logits.shape)}")


def vim(features: torch.Tensor, logits: torch.Tensor, u: torch.Tensor, NS: torch.Tensor, alpha: float) -> torch.Tensor:
    """ViM score: ``energy(logits) - alpha * |(x - u) NS|`` (see :func:`vim_fit`)."""
    _tensors(features=features, logits=logits, u=u, NS=NS)
    _same_images(features, logits)
    if u.shape != features.shape[1:] or NS.ndim != 2 or NS.shape[0] != features.shape[1]:
        raise ValueError(f"vim's fit is for {u.shape[-1] if u.ndim else '?'} features, got features of shape "
                         f"{list(features.shape)} (u {list(u.shape)}, NS {list(NS.shape)})")
    _finite("alpha", alpha)
    x = features.double() - u.to(features.device)  # [B, C]
    vlogit = torch.linalg.vector_norm(x @ NS.to(x), dim=-1)  # [B] (NS as float64 too: a float32 one is fine)
    return (energy(logits).double() - alpha * vlogit).float()


def gradnorm(logits: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
    """GradNorm (Huang et al., 2021), T = 1, in closed form.

    GradNorm is the L1 norm of the gradient of ``KL(uniform || softmax(logits))`` (the cross
    entropy with uniform targets) with respect to the final layer's weight. For a linear head
    ``z = W h + b`` that gradient is the outer product ``(softmax(z) - 1/K) h^T``, whose L1 norm
    is ``|softmax(z) - 1/K|_1 * |h|_1``: exact, and batched instead of one backward per image.

    Args:
        logits: [B, K]; features: the penultimate features h, [B, C].
    """
    _tensors(logits=logits, features=features)
    _same_images(features, logits)
    _classes("logits", logits)
    # (logits on another device than the features stopped in the product: moved, as knn moves its bank)
    p = logits.float().to(features.device).softmax(dim=-1)  # [B, K]
    K = p.shape[-1]
    return (p - 1.0 / K).abs().sum(dim=-1) * features.float().abs().sum(dim=-1)


def odin(forward: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, std: torch.Tensor, T: float = ODIN_T,
         eps: float = ODIN_EPS) -> torch.Tensor:
    """ODIN (Liang et al., 2018): max softmax at temperature T of an input nudged against the loss.

    As the reference implementation: ``g = d CE(f(x) / T, argmax f(x)) / dx``; the step is
    ``x' = x - eps * sign(g) / std`` (sign taken as +1 where g >= 0, -1 elsewhere; divided by
    the per-channel std because ``x`` is already normalised); the score is
    ``max softmax(f(x') / T)``.

    Args:
        forward: the network, normalised images -> logits [B, K]; its parameters get no
            gradient kept. Call it outside ``torch.inference_mode`` (ODIN needs a gradient).
        x: normalised inputs [B, 3, H, W].
        std: the per-channel normalisation std, [1, 3, 1, 1] (or [3], or one number), > 0.
        T: the softmax temperature, > 0.
        eps: the size of the step in [0, 1] pixel units, finite and >= 0.
    """
    _tensors(x=x)
    _positive("T", T)
    # (a negative eps stepped with the loss instead of against it; an infinite one made inf pixels)
    if not _real(eps) or not 0 <= eps < math.inf:
        raise ValueError(f"eps must be finite and >= 0, got {eps!r}")
    if not x.is_floating_point():  # (requires_grad_ stopped: "only Tensors of floating point dtype can require ...")
        raise TypeError(f"odin takes normalised float images x, got {x.dtype}")
    if x.ndim != 4:  # (std [1, C, 1, 1] broadcast against features [B, D] to [1, C, B, D])
        raise ValueError(f"odin takes normalised images x [B, C, H, W], got shape {list(x.shape)}")
    std = torch.as_tensor(std)
    if std.numel() not in (1, x.shape[1]):
        raise ValueError(f"std must hold one value per channel of x ({x.shape[1]}), got shape {list(std.shape)}")
    # (a std of 0 divided the step to inf pixels and every score was NaN; a negative one stepped with the loss)
    if not bool(((std > 0) & (std < math.inf)).all()):
        raise ValueError(f"std must be finite and > 0, got {std.flatten().tolist()}")
    if torch.is_inference_mode_enabled():  # (autograd.grad stopped: "element 0 of tensors does not require grad")
        raise RuntimeError("odin needs the gradient of the loss wrt its input: call it outside torch.inference_mode "
                           "(torch.no_grad is fine)")
    x = x.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        logits = forward(x)  # [B, K]
        loss = torch.nn.functional.cross_entropy(_over(logits, T)[0], logits.argmax(dim=-1), reduction="sum")
        (grad,) = torch.autograd.grad(loss, x)
    step = (grad >= 0).float() * 2 - 1  # [B, 3, H, W] in {-1, +1}
    step = step / std.reshape(1, -1, 1, 1).to(x)
    with torch.no_grad():
        out = forward(x.detach() - eps * step)
    return _over(out, T)[0].softmax(dim=-1).amax(dim=-1)


# name -> (function, what it takes: "logits" or "cosine")
SCORES: dict[str, tuple[Callable[[torch.Tensor], torch.Tensor], str]] = {
    "msp": (msp, "logits"),
    "maxlogit": (maxlogit, "logits"),
    "energy": (energy, "logits"),
    "mcm": (mcm, "cosine"),
}


def local_mcm(local_cosine: torch.Tensor, tau: float = 1.0) -> torch.Tensor:
    """Local MCM (Miyai et al., 2023): max over patches and classes of the per-patch MCM.

    Args:
        local_cosine: cos(patch feature, text feature), [B, N, K] (N patches, K classes).
        tau: softmax temperature over the classes.
    """
    _tensors(local_cosine=local_cosine)
    if local_cosine.ndim != 3:  # a [B, K] matrix would be maxed to one number for the whole batch
        raise ValueError(f"local_cosine must be [B, N, K] (N patches), got shape {list(local_cosine.shape)}")
    _positive("tau", tau)
    _classes("local_cosine", local_cosine)
    if local_cosine.shape[1] == 0:  # (amax stopped: "Expected reduction dim -2 to have non-zero size")
        raise ValueError(f"local_cosine must hold at least one patch, got shape {list(local_cosine.shape)}")
    return _over(local_cosine, tau)[0].softmax(dim=-1).amax(dim=(-2, -1))


def gl_mcm(cosine: torch.Tensor, local_cosine: torch.Tensor, tau: float = 1.0, local_weight: float = 1.0) -> torch.Tensor:
    """GL-MCM (Miyai et al., 2023): ``mcm(global) + local_weight * local_mcm(patches)``.

    Args:
        cosine: global cos(image, text), [B, K].
        local_cosine: per-patch cos(patch, text), [B, N, K].
        tau: softmax temperature of both terms.
        local_weight: weight of the local term (1 in the GL-MCM paper).
    """
    _tensors(cosine=cosine, local_cosine=local_cosine)
    if cosine.ndim != 2 or local_cosine.ndim != 3 or (cosine.shape[0], cosine.shape[1]) != (
            local_cosine.shape[0], local_cosine.shape[2]):  # (else one image's term is broadcast to all)
        raise ValueError(f"cosine [B, K] and local_cosine [B, N, K] must agree, got shapes "
                         f"{list(cosine.shape)} and {list(local_cosine.shape)}")
    _finite("local_weight", local_weight)
    return mcm(cosine, tau) + local_weight * local_mcm(local_cosine, tau)
