"""The SMOT core: CAM thresholds and masks, eps(t), soft labels and the SMOT loss (docs/method.md §1).

Tensors in, tensors out. This module imports nothing else of the package, so both tracks
(the CLIP prompt and the ResNets) and any user code share exactly the same formulas.

Conventions:
    * images are floats in [0, 1], shape [B, 3, H, W], before mean/std normalisation;
    * CAMs are floats in [0, 255], shape [B, H, W] or [B, 1, H, W];
    * thresholds ``t`` are floats in [0, 255], one per image.
"""

from __future__ import annotations

import math
import numbers

import torch
import torch.nn.functional as F

__all__ = [
    "PERTURBATIONS",
    "cam_mask",
    "label_smoothing_ce",
    "logitnorm_loss",
    "perturb",
    "sample_thresholds",
    "smoothing_eps",
    "smot_loss",
    "soft_cross_entropy",
    "soft_targets",
]

PERTURBATIONS = ("zero", "one", "noise")
_TINY_CONC = 1e-300  # Beta parameters below it are scaled up together (see sample_thresholds)


def _tensors(**named) -> None:
    """Refuse what is no tensor where one is read: a numpy array or a list stopped on a missing attribute
    ("'numpy.ndarray' object has no attribute 'float'"), naming no argument."""
    for name, value in named.items():
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
        if value.is_complex():  # (.float() kept the real part, with a warning once a process)
            raise TypeError(f"{name} must hold real numbers, got {value.dtype}")


def _working(logits: torch.Tensor) -> torch.Tensor:
    """``logits`` in the dtype a loss is computed in: float32, or float64 for float64 logits (a finite
    logit past float32's 3.4e38 was inf there, and its log-softmax NaN). Losses are returned as float32."""
    return logits.double() if logits.dtype == torch.float64 else logits.float()


def _real(value) -> bool:
    """Whether ``value`` is a real number to check a setting against: a Python or numpy number but no
    bool (True is an int to Python, read as 1), or a one-element real tensor. (None or a string stopped in
    the comparison, with an error naming no argument; numpy's True was read as 1.)"""
    if isinstance(value, torch.Tensor):
        return value.numel() == 1 and value.dtype != torch.bool and not value.is_complex()
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def smoothing_eps(t: torch.Tensor, T: float) -> torch.Tensor:
    """Label-smoothing amount for each masked image (Eq. 9): ``eps = 1 - exp((t - 255) / T)``.

    A threshold of 255 masks (almost) nothing and gives eps = 0; a low threshold masks most of
    the label-related region and gives eps close to 1.

    Args:
        t: thresholds in [0, 255], shape [B]. One outside is read at the nearest end, as
            :func:`cam_mask` masks for it (above 255: nothing, eps 0; below 0: everything).
        T: temperature, > 0. Larger T softens the labels less for the same threshold (eps falls
            towards 0); a smaller T makes even a high threshold give a large eps.

    Returns:
        eps in [0, 1], shape [B], same dtype as ``t`` (float32 for integer input).
    """
    _tensors(t=t)
    if not _real(T) or not T > 0:
        raise ValueError(f"T must be > 0, got {T!r}")
    t = t if t.is_floating_point() else t.float()
    # (clamped, not checked: no host sync in the step; t > 255 gave eps < 0, targets below 0 for
    # the other classes and a loss without a lower bound)
    gap = t.clamp(0.0, 255.0) - 255.0  # [B], <= 0
    if T < torch.finfo(t.dtype).tiny:  # (such a T is 0 in t's dtype: at t = 255, 0 / 0 was a NaN eps)
        return (1.0 - torch.exp(gap.double() / T)).to(t.dtype)
    return 1.0 - torch.exp(gap / T)


def soft_targets(y: torch.Tensor, eps: torch.Tensor | float, num_classes: int) -> torch.Tensor:
    """Soft labels (Eq. 5): ``(1 - eps) * onehot(y) + eps / K`` on every class.

    Args:
        y: integer class indices, shape [B].
        eps: smoothing per image in [0, 1], shape [B] (or [B, 1]), or one float for the whole batch.
            A tensor on the CPU is checked at once; on a CUDA device by ``torch._assert_async``, which
            the step does not wait for (a value outside stops the process at a later kernel, as a label
            outside [0, K) does there); on other devices it is not checked.
        num_classes: K.

    Returns:
        [B, K] float targets; each row sums to 1.
    """
    _tensors(y=y)
    _check_eps(eps)
    if y.ndim != 1:
        raise ValueError(f"y must be [B] class indices, got shape {list(y.shape)}")
    if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:  # (.long() read 1.9 as class 1, True as 1)
        raise ValueError(f"y must be integer class indices, got {y.dtype}")
    # (-1 was one_hot's "as many as the largest label": eps / -1 made the other targets negative)
    if isinstance(num_classes, bool) or not isinstance(num_classes, numbers.Integral) or num_classes < 1:
        raise ValueError(f"num_classes must be an integer >= 1, got {num_classes!r}")
    try:
        onehot = F.one_hot(y.long(), num_classes).float()  # [B, K]
    except RuntimeError as e:  # (one_hot checks the labels on the CPU: "Class values must be ...")
        raise ValueError(f"y must be class indices in [0, {num_classes}): {e}") from None
    eps = torch.as_tensor(eps, dtype=onehot.dtype, device=onehot.device)
    if eps.ndim == 2 and eps.shape[1] == 1:
        eps = eps[:, 0]
    # (a [1, B] row would broadcast over the classes instead: silently wrong when B is K)
    if eps.ndim > 1 or eps.numel() not in (1, len(y)):
        raise ValueError(f"eps must be one float or one per image ([{len(y)}]), got shape {list(eps.shape)}")
    if eps.ndim == 1:
        eps = eps[:, None]  # [B, 1]
    return (1.0 - eps) * onehot + eps / num_classes


def _check_eps(eps: torch.Tensor | float) -> None:
    """Refuse a smoothing amount outside [0, 1] (or NaN, or a bool): the other classes' targets ``eps / K``
    and the true class's ``1 - eps + eps / K`` would leave [0, 1], and a negative target gives a loss with
    no lower bound. A tensor is checked without a host sync on CUDA (see :func:`soft_targets`)."""
    if isinstance(eps, bool) or (isinstance(eps, numbers.Real) and not 0 <= eps <= 1):
        raise ValueError(f"eps must be in [0, 1], got {eps!r}")
    if not isinstance(eps, (torch.Tensor, numbers.Real)):  # (a numpy array, a list)
        try:
            eps = torch.as_tensor(eps)
        except (TypeError, ValueError, RuntimeError):  # (None: "Could not infer dtype of NoneType")
            raise TypeError(f"eps must be a number or a tensor of them, got {eps!r}") from None
    if isinstance(eps, torch.Tensor) and (eps.dtype == torch.bool or eps.is_complex()):  # (True read as 1)
        raise TypeError(f"eps must be a number or a tensor of them, got a tensor of {eps.dtype}")
    if isinstance(eps, torch.Tensor) and eps.numel() and eps.device.type in ("cpu", "cuda"):
        lo, hi = eps.detach().aminmax()  # (NaN is the min and the max of a tensor that holds one)
        if eps.device.type == "cuda":
            torch._assert_async((lo >= 0) & (hi <= 1), "eps must be in [0, 1]")
        elif not (lo.item() >= 0 and hi.item() <= 1):  # (one pass over [B]: nothing next to the loss itself)
            raise ValueError(f"eps must be in [0, 1], got values from {lo.item()} to {hi.item()}")


def sample_thresholds(
    batch_size: int,
    alpha: float,
    beta: float,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Draw one masking threshold per image: ``t = 255 * s``, ``s ~ Beta(alpha, beta)``.

    The Beta draw uses two Gamma draws (s = g_a / (g_a + g_b)), which accept a generator, so
    runs are reproducible and resumable from the generator's state. The ratio is taken from the
    logs of the draws: for tiny alpha and beta (say 1e-3) both draws underflow to 0 in float64
    often, and 0 / 0 would be a NaN threshold (and when both are below 1e-300, where even the logs
    overflow, they are scaled up together: the same two ends with the same odds).

    Args:
        batch_size: number of thresholds.
        alpha, beta: Beta parameters, both > 0 (defaults 50 and 20, docs/method.md §1: mean 0.714).
        generator: optional torch.Generator for the draw (CPU generator).
        device: where the result lives (the draw itself is done on the generator's device).

    Returns:
        [batch_size] float32 thresholds in [0, 255].
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral) or batch_size < 0:
        raise ValueError(f"batch_size must be an integer >= 0, got {batch_size!r}")
    # (Gamma(inf) would never accept a draw)
    if not (_real(alpha) and _real(beta)) or not (0 < alpha < math.inf and 0 < beta < math.inf):
        raise ValueError(f"alpha and beta must be finite and > 0, got alpha={alpha!r}, beta={beta!r}")
    if generator is not None and not isinstance(generator, torch.Generator):  # (0: "'int' object has no attribute ...")
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    gen_device = generator.device if generator is not None else torch.device("cpu")
    if max(alpha, beta) < _TINY_CONC:
        # both log-draws would overflow to -inf (log(U) / a past float64 for a below ~1e-307), and
        # -inf - -inf is a NaN threshold; Beta(a, b) of such a, b is Bernoulli(a / (a + b)) at the two
        # ends to float64's precision, and so is Beta(k a, k b): scaled so that the larger is _TINY_CONC
        alpha, beta = alpha * (_TINY_CONC / max(alpha, beta)), beta * (_TINY_CONC / max(alpha, beta))
    conc = torch.tensor([alpha, beta], dtype=torch.float64, device=gen_device)
    # torch.distributions.Beta takes no generator, so draw the two Gammas ourselves.
    log_g = _log_gamma(conc.expand(batch_size, 2), generator)  # [B, 2]
    s = torch.sigmoid(log_g[:, 0] - log_g[:, 1])  # = g_a / (g_a + g_b)
    return (255.0 * s).float().to(device if device is not None else gen_device)


def _log_gamma(conc: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Logs of Gamma(conc, 1) draws with Marsaglia and Tsang's method, reproducible from ``generator``.

    For conc < 1 the draw uses the boost ``Gamma(a) = Gamma(a + 1) * U^(1/a)``, in logs:
    ``U^(1/a)`` underflows to 0 for small ``a`` (``a = 1e-3``: for U below about 0.47).
    """
    small = conc < 1
    a = torch.where(small, conc + 1, conc)
    d = a - 1.0 / 3.0
    c = 1.0 / torch.sqrt(9.0 * d)
    out = torch.empty_like(a)
    todo = torch.ones_like(a, dtype=torch.bool)
    while todo.any():
        # Rejection sampling: the acceptance rate is above 95% for every a >= 1.
        x = torch.randn(a.shape, generator=generator, dtype=a.dtype, device=a.device)
        u = torch.rand(a.shape, generator=generator, dtype=a.dtype, device=a.device)
        v = (1 + c * x) ** 3
        ok = (v > 0) & (torch.log(u) < 0.5 * x**2 + d - d * v + d * torch.log(v.clamp_min(1e-30)))
        take = todo & ok
        out = torch.where(take, d * v, out)
        todo = todo & ~ok
    out = out.log()
    if small.any():
        u = torch.rand(a.shape, generator=generator, dtype=a.dtype, device=a.device)
        out = torch.where(small, out + u.log() / conc, out)
    return out


def cam_mask(cam: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Keep-mask of Eq. 7: 0 where ``cam >= t``, 1 elsewhere.

    Args:
        cam: CAMs in [0, 255], shape [B, H, W] or [B, 1, H, W] (any real dtype, uint8 too).
        t: thresholds, shape [B].

    Returns:
        [B, 1, H, W] float mask, 1 = keep, 0 = masked.
    """
    _tensors(cam=cam, t=t)
    if cam.ndim == 3:
        cam = cam[:, None]  # [B, 1, H, W]
    # (t of another length broadcast to a batch of masks of its own length)
    if cam.ndim != 4 or cam.shape[1] != 1 or t.numel() not in (1, cam.shape[0]):
        raise ValueError(f"cam_mask needs cam [B, H, W] or [B, 1, H, W] and t [B], got cam "
                         f"{list(cam.shape)} and t {list(t.shape)}")
    # compared in float64 when either is: in float32 a CAM of 99.999999999 rounded up to a threshold of 100
    # and was masked
    dtype = torch.float64 if torch.float64 in (cam.dtype, t.dtype) else torch.float32
    t = t.to(device=cam.device, dtype=dtype).view(-1, 1, 1, 1)
    return (cam.to(dtype) < t).float()


def perturb(
    x: torch.Tensor,
    keep: torch.Tensor,
    mode: str = "zero",
    sigma: float = 0.1,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Apply the perturbation T(x) of Table 9 to images in [0, 1].

    Args:
        x: images [B, 3, H, W] in [0, 1], before normalisation.
        keep: mask [B, 1, H, W], 1 = keep, 0 = masked (from :func:`cam_mask`); a soft mask in
            between weighs the perturbation by ``1 - keep`` in every mode.
        mode: "zero" masks to black (the paper's default), "one" masks to white, "noise"
            adds Gaussian noise of std ``sigma`` inside the would-be masked region (pixels
            clipped to [0, 1]) instead of removing it: ``x + (1 - keep) * sigma * noise``.
        sigma: noise std for mode "noise", >= 0.
        generator: optional generator for the noise.

    Returns:
        Perturbed images, same shape and dtype as ``x``.
    """
    _tensors(x=x, keep=keep)
    if not x.is_floating_point():  # ("one" set a uint8 image's masked pixels to 1 of 255)
        raise TypeError(f"perturb takes float images x in [0, 1], got {x.dtype}")
    # a [B, H, W] mask would broadcast against [3, H, W] instead: silently wrong when B is 3
    if keep.ndim != 4 or x.ndim != 4 or any(k not in (1, n) for k, n in zip(keep.shape, x.shape)):
        raise ValueError(f"keep must be a [B, 1, H, W] mask for images x of shape {list(x.shape)}, "
                         f"got shape {list(keep.shape)}")
    keep = keep.to(device=x.device, dtype=x.dtype)  # (a mask on another device stopped in the product)
    if mode == "zero":
        return x * keep
    if mode == "one":
        return x * keep + (1 - keep)
    if mode == "noise":
        if not _real(sigma) or not sigma >= 0:  # (NaN made every masked pixel NaN)
            raise ValueError(f"sigma must be >= 0, got {sigma!r}")
        noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        # kept pixels chosen, not multiplied by the mask: noise past the dtype's range (a huge
        # sigma) is inf, and inf * 0 made a kept pixel NaN
        return torch.where(keep >= 1, x, (x + (1 - keep) * (sigma * noise)).clamp(0, 1))
    raise ValueError(f"perturbation mode must be one of {PERTURBATIONS}, got {mode!r}")


def _check_batch(logits: torch.Tensor) -> None:
    """Refuse logits of no image or no class: the batch mean of no losses is NaN in torch (0 / 0), which
    reads as a diverged step; a batch of no classes had the loss 0."""
    if logits.numel() == 0:
        raise ValueError(f"logits must hold at least one image and one class, got shape {list(logits.shape)}")


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Batch mean of ``-sum_k targets[k] * log_softmax(logits)[k]``, computed in float32 (float64
    for float64 logits), returned as float32.

    A class of target 0 adds nothing, also where its logit is -inf (a class switched off), as in
    ``F.cross_entropy``: 0 * log 0 is taken as 0, not NaN. An empty batch is refused (a ValueError),
    as by the other losses here, where ``F.cross_entropy`` returns NaN.
    """
    _tensors(logits=logits, targets=targets)
    _check_batch(logits)
    # targets [B, 1] (one number per image) broadcast over the classes, [B, 1, K] over the batch (B x B
    # pairs averaged): both silently another loss; one row [K] or [1, K] for every image is fine
    if targets.shape[-1:] != logits.shape[-1:] or torch.broadcast_shapes(targets.shape, logits.shape) != logits.shape:
        raise ValueError(f"targets must be [B, K] as the logits, or one [K] row for all, got shapes "
                         f"{list(targets.shape)} and {list(logits.shape)}")
    targets = targets.to(logits.device)  # (targets on another device stopped in the product)
    logp = F.log_softmax(_working(logits), dim=-1)  # [B, K]
    return -torch.where(targets == 0, 0.0, targets * logp).sum(dim=-1).mean().float()


def _hard_ce(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``F.cross_entropy(logits, y)`` of labels ``y`` [B] of any integer dtype, bad labels named.

    (cross_entropy alone truncated float labels (1.7 -> 1) after ``.long()``, and answered labels
    outside [0, K) with an IndexError and y [B, 1] with "multi-target not supported")
    """
    _check_batch(logits)
    if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:  # (a mask passed as labels: classes 0, 1)
        raise ValueError(f"y must be integer class indices, got {y.dtype}")
    if y.shape != logits.shape[:-1]:
        raise ValueError(f"y must hold one class index per row of the logits {list(logits.shape)}, got shape "
                         f"{list(y.shape)}")
    try:  # (rows flattened: cross_entropy reads [B, N, K] as [B, C, d], axis 1 as the classes)
        # (labels on another device than the logits stopped in cross_entropy: moved)
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                               y.to(logits.device).long().reshape(-1))  # [B*N, K], [B*N]
    except IndexError as e:  # (checked on the CPU; a GPU asserts in the kernel)
        raise ValueError(f"y must be class indices in [0, {logits.shape[-1]}): {e}") from None


def smot_loss(
    logits: torch.Tensor,
    logits_masked: torch.Tensor,
    y: torch.Tensor,
    eps: torch.Tensor,
    lam: float,
) -> torch.Tensor:
    """The SMOT loss (Eq. 8): ``(1 - lam) * CE(f(x), y) + lam * CE(f(T(x)), y_eps)``.

    Args:
        logits: [B, K] logits of the original images.
        logits_masked: [B, K] logits of their perturbed copies (same order).
        y: [B] true labels.
        eps: [B] smoothing per perturbed image in [0, 1], from :func:`smoothing_eps` (checked as
            :func:`soft_targets` says).
        lam: weight of the perturbed term, in [0, 1].

    Returns:
        Scalar loss (float32).
    """
    _tensors(logits=logits, logits_masked=logits_masked, y=y)
    if not _real(lam) or not 0.0 <= lam <= 1.0:
        raise ValueError(f"lam must be in [0, 1], got {lam!r}")
    # (the soft term's [B, K] targets broadcast against a [1, K] row; its K sized the targets)
    if logits.ndim != 2 or logits_masked.shape != logits.shape:
        raise ValueError(f"logits and logits_masked must both be [B, K], got shapes {list(logits.shape)} "
                         f"and {list(logits_masked.shape)}")
    hard = _hard_ce(_working(logits), y).float()
    soft = soft_cross_entropy(logits_masked, soft_targets(y, eps, logits_masked.shape[-1]))
    return (1.0 - lam) * hard + lam * soft


def label_smoothing_ce(logits: torch.Tensor, y: torch.Tensor, eps: float = 0.1) -> torch.Tensor:
    """Label smoothing on the originals (Szegedy et al.), the paper's "label smooth" baseline."""
    _tensors(logits=logits, y=y)
    if not _real(eps) or not 0.0 <= eps <= 1.0:  # (eps > 1 gave the other classes negative targets)
        raise ValueError(f"eps must be in [0, 1], got {eps!r}")
    _check_batch(logits)
    if y.shape != logits.shape[:-1]:  # (soft_targets of y [1] is one [1, K] row, which soft_cross_entropy broadcasts)
        raise ValueError(f"y must hold one class index per row of the logits {list(logits.shape)}, got shape "
                         f"{list(y.shape)}")
    return soft_cross_entropy(logits, soft_targets(y, eps, logits.shape[-1]))


def logitnorm_loss(logits: torch.Tensor, y: torch.Tensor, tau: float = 0.04) -> torch.Tensor:
    """LogitNorm (Wei et al., 2022): CE on ``logits / (tau * ||logits||)``."""
    _tensors(logits=logits, y=y)
    if not _real(tau) or not tau > 0:  # (0 gave a NaN loss, a negative tau the CE of the negated logits)
        raise ValueError(f"tau must be > 0, got {tau!r}")
    _check_batch(logits)
    # (in float64 also for a tau whose 1 / tau is past float32: l / (|l| tau) was inf there, the loss NaN)
    logits = logits.double() if tau < 1 / torch.finfo(torch.float32).max else _working(logits)
    # l / ((|l| + 1e-7) tau), with l scaled by its largest |l| first: |l| of logits past ~1.8e19 overflowed
    # (their squares are past float32), and every row was divided by inf to all zeros, the loss log K
    scale = logits.detach().abs().amax(dim=-1, keepdim=True).clamp_min(torch.finfo(torch.float32).tiny)  # [B, 1]
    unit = logits / scale  # [B, K], in [-1, 1]
    norms = torch.linalg.vector_norm(unit, dim=-1, keepdim=True) + 1e-7 / scale  # [B, 1]: (|l| + 1e-7) / scale
    return _hard_ce(unit / (norms * tau), y).float()

