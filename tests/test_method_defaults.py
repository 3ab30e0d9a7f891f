"""docs/method.md §1-§3 defaults, pinned: the configs, the CLI flags that fill them, the score constants.

The values are written out here from docs/method.md, not read from the code, so changing a default in
one place (a dataclass, a click option, a module constant) fails a test.
"""

import dataclasses

import pytest
import torch

from clip_smot import scores
from clip_smot.cli import cli
from clip_smot.clip.fit import FitConfig
from clip_smot.resnet import evaluate as resnet_eval
from clip_smot.resnet.train import TrainConfig, resolve_config

# docs/method.md §2 (CLIP track) and section 1 (ImageNet-1k CLIP track: T = 200; the noise
# perturbation's sigma 0.1, our choice).
FIT_SPEC = {
    "shots": 16, "model": "ViT-B-16", "pretrained": "openai", "cam_model": "resnet18-imagenet", "n_ctx": 16,
    "ctx_init": None, "csc": False, "class_position": "end", "loss": "smot", "alpha": 50.0, "beta": 20.0,
    "lam": 0.1, "T": 200.0, "perturb": "zero", "sigma": 0.1, "epochs": 50, "batch_size": 32, "lr": 0.002,
    "momentum": 0.9, "weight_decay": 5e-4, "warmup_epochs": 1, "warmup_lr": 1e-5, "crop_scale": 0.08,
}

# docs/fit.md's option table: the defaults of the options docs/method.md leaves to the tool.
FIT_DOCS = {
    "data": None, "split": None, "seed": 1, "workers": 4, "out": "runs/fit", "precision": "bf16", "device": "auto",
    "text_attention": "auto", "text_residual": "fp32", "compile": None, "cuda_graph": None, "overlap_encoders": None,
}

# docs/method.md §1 and §3 (ResNet track), per stage, dataset and class count: (epochs, batch, lr, T, method, arch).
TRAIN_SPEC = {
    ("base", "cifar10", 10): (200, 128, 0.1, 10.0, "ce", "resnet18"),
    ("smot", "cifar10", 10): (300, 128, 0.1, 10.0, "smot", "resnet18"),
    ("smot", "cifar100", 100): (300, 128, 0.1, 150.0, "smot", "resnet18"),
    ("smot", "imagenet200", 200): (300, 128, 0.1, 200.0, "smot", "resnet18"),
    # not in docs/method.md: the CPU digits recipe of docs/resnet.md (8 epochs per stage)
    ("base", "digits", 10): (8, 64, 0.05, 10.0, "ce", "resnet_tiny"),
    ("smot", "digits", 10): (8, 64, 0.05, 10.0, "smot", "resnet_tiny"),
    # folders: the paper's T of the smallest of its class counts (10, 100, 200) that is >= K
    ("smot", None, 7): (300, 128, 0.1, 10.0, "smot", "resnet18"),
    ("smot", None, 10): (300, 128, 0.1, 10.0, "smot", "resnet18"),
    ("smot", None, 11): (300, 128, 0.1, 150.0, "smot", "resnet18"),  # docs/resnet.md: 10 for K <= 10, 150 for K <= 100
    ("smot", None, 100): (300, 128, 0.1, 150.0, "smot", "resnet18"),
    ("smot", None, 101): (300, 128, 0.1, 200.0, "smot", "resnet18"),
}


def _cli_defaults(command: str) -> dict:
    """What each option of ``clip-smot COMMAND`` holds when it is not given."""
    return cli.commands[command].make_context(command, [], resilient_parsing=True).params


def test_fit_config_and_fit_flags_hold_the_spec_defaults():
    cfg = FitConfig()
    assert {k: getattr(cfg, k) for k in FIT_SPEC} == FIT_SPEC
    assert {k: getattr(cfg, k) for k in FIT_DOCS} == FIT_DOCS
    flags = _cli_defaults("fit")
    # every flag that fills a FitConfig field defaults to that field's default
    checked = 0
    for f in dataclasses.fields(FitConfig):
        name = "split_file" if f.name == "split" else f.name
        if name in flags:
            assert flags[name] == f.default, f.name
            checked += 1
    assert checked == len(flags) - 2  # and every flag fills one, but run_fit's arguments
    assert flags["resume"] is False and flags["dry_run"] is False


@pytest.mark.parametrize("key, want", list(TRAIN_SPEC.items()), ids=lambda v: str(v))
def test_train_defaults_per_stage_and_dataset(key, want):
    stage, dataset, k = key
    cfg = resolve_config(TrainConfig(out="x", stage=stage, dataset=dataset, data=None if dataset else "d",
                                     cam_model="m" if stage == "smot" else None), k, 32)
    assert (cfg.epochs, cfg.batch_size, cfg.lr, cfg.T, cfg.method, cfg.arch) == want


def test_train_config_and_train_flags_hold_the_spec_defaults():
    cfg = TrainConfig(out="x")
    assert (cfg.momentum, cfg.weight_decay, cfg.alpha, cfg.beta, cfg.lam, cfg.perturb) == (0.9, 5e-4, 50.0, 20.0, 0.1,
                                                                                           "zero")
    assert cfg.sigma == 0.1  # the noise perturbation's std (docs/method.md §1)
    assert (cfg.ls_eps, cfg.logitnorm_tau) == (0.1, 0.04)  # the label-smoothing and LogitNorm baselines
    flags = _cli_defaults("train")
    for name in ("alpha", "beta", "lam", "perturb", "sigma", "stage", "seed"):
        assert flags[name] == getattr(cfg, name), name
    for name in ("epochs", "batch_size", "lr", "T", "method", "arch"):  # None: per stage/dataset (above)
        assert flags[name] is None and getattr(cfg, name) is None, name


def test_score_constants_are_the_spec_values():
    assert (resnet_eval.ODIN_T, resnet_eval.ODIN_EPS) == (1000.0, 0.0014)
    assert (resnet_eval.REACT_PERCENTILE, resnet_eval.KNN_K) == (90.0, 50)
    logits = torch.tensor([[1.0, 3.0]])
    # Energy at T = 1: log(e^1 + e^3) = 3 + log(1 + e^-2) = 3.126928
    assert scores.energy(logits).item() == pytest.approx(3.126928, abs=1e-5)
    # MCM at tau = 1 on cosines (0.2, 0.6): 1 / (1 + e^-0.4) = 0.598688
    assert scores.mcm(torch.tensor([[0.2, 0.6]])).item() == pytest.approx(0.598688, abs=1e-6)
    assert _cli_defaults("score")["scores"] == "mcm" and _cli_defaults("eval")["fpr_convention"] == "id"


def test_the_library_functions_hold_the_spec_defaults_too():
    """The fit step and the prompt learner, called without fit's flags (benchmarks/, Python users),
    default to the same values as FitConfig (docs/method.md §1-§2)."""
    import inspect

    from clip_smot.clip.prompt import PromptLearner
    from clip_smot.clip.step import make_fit_step

    step = inspect.signature(make_fit_step).parameters
    assert {k: step[k].default for k in ("loss", "lam", "T", "alpha", "beta", "sigma")} == {
        k: FIT_SPEC[k] for k in ("loss", "lam", "T", "alpha", "beta", "sigma")}
    assert step["perturbation"].default == FIT_SPEC["perturb"]
    # docs/fit.md's precision, and the plain eager step: the CUDA graph, the compiled image tower
    # and the overlapped encoders are each asked for
    assert step["precision"].default == FIT_DOCS["precision"]
    assert (step["cuda_graph"].default, step["compile_image"].default, step["overlap"].default) == (False, False, False)
    learner = inspect.signature(PromptLearner).parameters
    assert {k: learner[k].default for k in ("n_ctx", "ctx_init", "csc", "class_position")} == {
        k: FIT_SPEC[k] for k in ("n_ctx", "ctx_init", "csc", "class_position")}
