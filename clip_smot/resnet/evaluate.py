"""ResNet-track evaluation: a trained model over ID and OOD sets -> post-hoc scores -> metric tables.

Scores (docs/method.md §3; the registry :data:`RESNET_SCORERS`), higher = more in-distribution:

* from the logits only: ``msp``, ``maxlogit``, ``energy`` (T = 1);
* from the logits and penultimate features: ``gradnorm`` (closed form, see
  :func:`clip_smot.scores.gradnorm`);
* running the network again on a perturbed input: ``odin`` (T = 1000, eps = 0.0014);
* **fitted on ID training features** (``--id-train``, by default the set the model was trained
  on, without augmentation): ``react`` (clip at the 90th percentile of the ID-train
  activations, then energy), ``knn`` (k = 50, normalised penultimate features of every
  ID-train image) and ``vim`` (principal space, origin and alpha from ID-train features).

Outputs go through :func:`clip_smot.common.reports.write_reports`, like the CLIP track.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from clip_smot import scores as S
from clip_smot.common.bundled import imagenet200_wnids
from clip_smot.common.configs import check_ranges, setting
from clip_smot.common.device import resolve_device
from clip_smot.common.errors import UserError
from clip_smot.common.files import check_output_folder, given_path, is_folder
from clip_smot.common.image_sets import check_apart, check_train_apart
from clip_smot.common.images import split_folder
from clip_smot.common.locks import output_lock
from clip_smot.common.reports import REPORT_FILES, EvalConfig, check_id_train_used, check_ood_names, write_reports
from clip_smot.resnet.data import (
    BUILTIN_ID,
    SizedImageSet,
    eval_batches,
    load_class_folders,
    load_id_split,
    load_ood_set,
    resize_set,
)
from clip_smot.resnet.networks import load_model

__all__ = ["RESNET_SCORERS", "RESNET_SCORES", "TRAIN_FITTED", "NetworkOutputs", "ResnetEvalConfig", "run_resnet_eval"]

TRAIN_FITTED = ("react", "knn", "vim")  # need ID training features
ODIN_T, ODIN_EPS, REACT_PERCENTILE, KNN_K = S.ODIN_T, S.ODIN_EPS, S.REACT_PERCENTILE, S.KNN_K


@dataclass(frozen=True, kw_only=True)
class ResnetEvalConfig(EvalConfig):
    """Every option of ``clip-smot eval --checkpoint``."""

    checkpoint: str = setting(help="ResNet model.safetensors from 'clip-smot train'.", path="file")

    def builtin_sets(self) -> tuple[str, ...]:
        """``--id`` and ``--id-train`` where they name a built-in set (cifar10, digits, ...; any case)."""
        return tuple(flag for flag, value in (("--id", self.id_data), ("--id-train", self.id_train))
                     if value is not None and value.lower() in BUILTIN_ID)


@dataclass
class NetworkOutputs:
    """What the network gives for a set of images: all a score reads."""

    logits: torch.Tensor  # [N, K]
    feats: torch.Tensor  # [N, C] penultimate features (global average pool)
    labels: torch.Tensor  # [N]
    odin: torch.Tensor | None  # [N] ODIN scores, when asked for (they need the network again)


# Each score from a set's outputs and the statistics fitted on ID training features (:func:`_fit`).
RESNET_SCORERS: dict[str, Callable[[NetworkOutputs, dict], torch.Tensor]] = {
    "msp": lambda o, fit: S.msp(o.logits),
    "odin": lambda o, fit: o.odin,
    "energy": lambda o, fit: S.energy(o.logits),
    "react": lambda o, fit: S.react(o.feats, fit["W"], fit["b"], fit["react_threshold"]),
    "maxlogit": lambda o, fit: S.maxlogit(o.logits),
    "knn": lambda o, fit: S.knn(o.feats, fit["knn_bank"], KNN_K),
    "vim": lambda o, fit: S.vim(o.feats, o.logits, fit["vim"]["u"], fit["vim"]["NS"], fit["vim"]["alpha"]),
    "gradnorm": lambda o, fit: S.gradnorm(o.logits, o.feats),
}
RESNET_SCORES = tuple(RESNET_SCORERS)


def _read_only_root(load, root: str | None):
    """``load(root, False)`` for a torchvision root read from the model file, else (or when the set
    is not there) ``load(None, True)``: the default root, where it may be downloaded. A folder a
    file names is read, never downloaded into."""
    if root:
        try:
            return load(root, False)
        except UserError:
            pass
    return load(None, True)


def _id_set(id_data: str, meta: dict, split: str, flag: str) -> SizedImageSet:
    """An ID split by built-in name or folder, checked against the model's classes.

    Raises:
        UserError: ``id_data`` is empty (``Path("")`` is ``.``: a library caller's unset
            ``"$DATA"`` read the current folder's class folders as the ID set).
    """
    given_path(id_data, flag, "a folder or a built-in set")
    size, classnames = meta["input_size"], meta["classnames"]
    cfg = meta["config"]
    if id_data.lower() in BUILTIN_ID:  # (always the set, as a bare --ood NAME: ./NAME names a folder)
        name = id_data.lower()
        if Path(id_data).exists():
            print(f"note: {flag} {id_data} is the built-in set; ./{id_data} names the folder of that name here",
                  file=sys.stderr)
        root = cfg.get("data") if cfg.get("dataset") == name else None
        if name == "imagenet200" and not root:
            if list(classnames) != imagenet200_wnids():  # (no ImageNet folder would give it the model's classes)
                raise UserError(f"{flag} {id_data}: its classes are not the model's ({meta['num_classes']} classes, "
                                f"{classnames[:3]}...)")
            raise UserError(f"{flag} imagenet200: the model was not trained on it from a known folder; "
                            f"pass {flag} IMAGENET_DIR/{split}")
        if name == "imagenet200":  # (the model file names the folder, maybe relative to where it was trained: said)
            print(f"note: {flag} imagenet200 reads {os.path.abspath(os.path.join(root, split))}, the folder "
                  f"{meta['path']} records; {flag} DIR names another", file=sys.stderr)
        if name in ("cifar10", "cifar100"):
            s = _read_only_root(lambda r, d: load_id_split(name, r, split, size, flag=flag, download=d), root)
        else:
            s = load_id_split(name, root, split, size, flag=flag)
        if list(s.classnames) != list(classnames):
            raise UserError(f"{flag} {id_data}: its classes are not the model's ({meta['num_classes']} classes, "
                            f"{classnames[:3]}...)")
        return resize_set(s, size)  # a built-in set comes at its own size
    root = Path(id_data)
    if not is_folder(root, flag):  # (pathlib's is_dir raised OSError for a name too long: a traceback)
        raise UserError(f"{flag} {root}: no such folder (or built-in set: {', '.join(BUILTIN_ID)})")
    return load_class_folders(split_folder(root, split, flag), classnames, size, flag)  # (DIR/val/<class>/ or DIR/<class>/)


def _train_set(id_train: str | None, meta: dict) -> SizedImageSet:
    if id_train is not None:  # ("" is refused there, not taken for "not given")
        return _id_set(id_train, meta, "train", "--id-train")
    cfg = meta["config"]
    if not cfg.get("dataset") and not cfg.get("data"):
        raise UserError(f"--id-train: {meta['path']} does not say what it was trained on; pass --id-train DIR")
    cifar = cfg.get("dataset") in ("cifar10", "cifar100")

    def load(root, download):  # (download: not into a folder the model file names)
        return load_id_split(cfg.get("dataset"), root, "train", meta["input_size"],
                             classnames=None if cfg.get("dataset") else meta["classnames"], flag="--id-train",
                             download=download)

    try:  # a CIFAR root the file names where the set is there, else the default root, as for --id
        s = _read_only_root(load, cfg.get("data")) if cifar else load(cfg.get("data"), not cfg.get("data"))
    except UserError as e:
        raise UserError(f"--id-train: the model's training data is not available ({e}); pass --id-train DIR") from None
    if list(s.classnames) != list(meta["classnames"]):  # (a built-in set's, which the file may name wrongly)
        raise UserError(f"--id-train: {meta['path']} says it was trained on {cfg['dataset']}, whose classes are not "
                        f"the model's ({meta['num_classes']} classes, {meta['classnames'][:3]}...); pass --id-train DIR")
    if cfg.get("data") and cfg.get("dataset") in (None, "imagenet200"):  # (the folder the file names was read,
        # maybe relative to where it was trained: said; a CIFAR root may not have been, digits read none)
        print(f"note: the fitted scores use the {len(s)} training images of {os.path.abspath(cfg['data'])}, the "
              f"folder {meta['path']} records; --id-train DIR names another", file=sys.stderr)
    return resize_set(s, meta["input_size"])


@torch.no_grad()
def _forward(model, s: SizedImageSet, mean, std, batch_size, device, workers, need_odin: bool) -> NetworkOutputs:
    """The network's outputs for every image of ``s`` (ODIN scores too with ``need_odin``)."""
    logits, feats, labels, odin_s = [], [], [], []
    fc = model.get_classifier()
    for x, y in eval_batches(s, batch_size, device, workers):
        inp = (x.float() / 255 - mean) / std  # [B, 3, S, S]
        h = model.forward_features(inp).float().mean(dim=(2, 3))  # [B, C]
        logits.append(fc(h).float())
        feats.append(h)
        labels.append(y)
        if need_odin:
            odin_s.append(S.odin(model, inp, std))
    cat = lambda xs: torch.cat(xs) if xs else torch.zeros(0, device=device)  # noqa: E731
    return NetworkOutputs(cat(logits), cat(feats), cat(labels), cat(odin_s) if need_odin else None)


def _score_names(scores: str | None) -> list[str]:
    """The comma-separated ``--scores``, lower-cased and de-duplicated (default msp)."""
    names = [n.strip().lower() for n in (scores or "").split(",") if n.strip()]
    if scores and not names:  # (",": was msp without a word, where the CLIP track refuses it)
        raise UserError(f"--scores {scores}: no score given (choose from {', '.join(RESNET_SCORES)})")
    names = names or ["msp"]
    unknown = [n for n in names if n not in RESNET_SCORERS]
    if unknown:
        raise UserError(f"--scores {','.join(unknown)}: not a ResNet score (choose from {', '.join(RESNET_SCORES)})")
    return list(dict.fromkeys(names))


def _fit(train: NetworkOutputs, fc, names: list[str]) -> dict:
    """The statistics of the ID training features that ``names`` need (react, knn, vim), and the
    classifier's weight ``W`` [K, C] and bias ``b`` [K]."""
    fitted = {"W": fc.weight.detach().float(), "b": fc.bias.detach().float()}
    if "react" in names:
        fitted["react_threshold"] = S.react_threshold(train.feats, REACT_PERCENTILE)
    if "knn" in names:
        if train.feats.shape[0] < KNN_K:
            raise UserError(f"--id-train: knn needs at least {KNN_K} training images, found {train.feats.shape[0]}")
        fitted["knn_bank"] = F.normalize(train.feats, dim=-1)
    if "vim" in names:
        try:
            fitted["vim"] = S.vim_fit(train.feats, train.logits, fitted["W"], fitted["b"])
        except ValueError as e:  # too few training images for its principal space
            raise UserError(f"--id-train: {e}") from None
    return fitted


def _score_table(o: NetworkOutputs, fitted: dict, names: list[str]) -> dict:
    """Each score of ``names`` for every image of ``o``, as a numpy array [N]."""
    return {n: RESNET_SCORERS[n](o, fitted).detach().float().cpu().numpy() for n in names}


def _accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float | None:
    """Top-1 accuracy in percent of logits [N, K] against labels [N] (None for no images)."""
    return 100.0 * int((logits.argmax(dim=-1) == labels).sum()) / len(labels) if len(labels) else None


def _load_sets(cfg: ResnetEvalConfig, meta: dict, inputs: list, folders: list) -> tuple[SizedImageSet, dict]:
    """The ID test set and the OOD sets, each image checked against the output folder."""
    size = meta["input_size"]
    for name, where in cfg.ood.items():  # (the built-in set's images are the ID test split's)
        if where is None and name.lower() == cfg.id_data.lower():
            raise UserError(f"--ood {name}: is the ID set (--id {cfg.id_data}) itself; an image cannot be in- and "
                            "out-of-distribution at once")
    id_set = _id_set(cfg.id_data, meta, "val", "--id")
    root = meta["config"].get("data") if meta["config"].get("dataset") in ("cifar10", "cifar100") else None
    ood_sets = {name: _read_only_root(lambda r, d: load_ood_set(name, where, size, data=r, download=d), root)
                for name, where in cfg.ood.items()}
    check_apart(id_set.files or (), [(s.name, s.files or ()) for s in ood_sets.values()])
    files = [(f"{'--id' if s is id_set else '--ood ' + s.name} image", f)
             for s in (id_set, *ood_sets.values()) for f in (s.files or ())]
    check_output_folder(cfg.out, "--out", [*inputs, *files], folders, writes=REPORT_FILES)  # (symlinks, hard links)
    return id_set, ood_sets


def run_resnet_eval(cfg: ResnetEvalConfig) -> dict:
    """Evaluate a ``clip-smot train`` model on ID and OOD sets and write the metric files.

    ``cfg`` (:class:`ResnetEvalConfig`): ``checkpoint``, the model's ``model.safetensors``;
    ``id_data``, ID test data: a folder (``DIR/val/<class>`` or ``DIR/<class>``) or a built-in
    name (cifar10, cifar100, digits, imagenet200); ``id_train``, ID training data for
    react/knn/vim (default: what the model was trained on); ``ood``, OOD set name -> folder, or
    None for the built-in set of that name (svhn, cifar10, cifar100, photos, textures);
    ``scores``, comma-separated names from :data:`RESNET_SCORES` (default msp); ``out``, the
    folder for metrics.csv/.json/.md and scores_hist.png.

    Returns:
        The metrics.json content.
    """
    check_ranges(cfg)
    check_ood_names(cfg.ood)
    names = _score_names(cfg.scores)
    check_id_train_used({"--id-train": cfg.id_train}, names, TRAIN_FITTED)
    lists, folders = cfg.read_sets()
    inputs = [("--checkpoint file", cfg.checkpoint), *lists]
    check_output_folder(cfg.out, "--out", inputs, folders, writes=REPORT_FILES)
    with output_lock(cfg.out, folder=True):  # (two evaluations into one folder would mix their files)
        return _evaluate(cfg, names, inputs, folders)


def _evaluate(cfg: ResnetEvalConfig, names: list[str], inputs: list, folders: list) -> dict:
    """:func:`run_resnet_eval` once its arguments are checked and no other command writes ``--out``."""
    dev = resolve_device(cfg.device)
    model, meta = load_model(cfg.checkpoint, dev)
    mean = torch.tensor(meta["mean"], device=dev).view(1, 3, 1, 1)
    std = torch.tensor(meta["std"], device=dev).view(1, 3, 1, 1)
    # the folder the model file records is read for the fitted scores without --id-train, and for
    # --id or --id-train imagenet200 (not a CIFAR root: torchvision's files, no images)
    fitted_needed = any(n in TRAIN_FITTED for n in names)
    reads_recorded = (fitted_needed and not cfg.id_train) or "imagenet200" in (cfg.id_data.lower(),
                                                                              (cfg.id_train or "").lower())
    if reads_recorded and meta["config"].get("dataset") not in ("cifar10", "cifar100"):
        check_output_folder(cfg.out, "--out", folders=[("the training data folder the model file records",
                                                        meta["config"].get("data"))], writes=REPORT_FILES)
    id_set, ood_sets = _load_sets(cfg, meta, inputs, folders)
    run = lambda s, odin: _forward(model, s, mean, std, cfg.batch_size, dev, cfg.workers, odin)  # noqa: E731

    fitted = {}
    if fitted_needed:
        train = _train_set(cfg.id_train, meta)
        check_train_apart(train.files or (), id_set.files or (), [(s.name, s.files or ()) for s in ood_sets.values()])
        fitted = _fit(run(train, False), model.get_classifier(), names)
    need_odin = "odin" in names
    id_out = run(id_set, need_odin)
    id_scores = _score_table(id_out, fitted, names)
    labels = id_out.labels
    id_accuracy = _accuracy(id_out.logits, labels)
    ood_scores = {name: _score_table(run(s, need_odin), fitted, names) for name, s in ood_sets.items()}
    extra = {
        "checkpoint": str(cfg.checkpoint), "arch": meta["arch"], "trained_on": meta["dataset"],
        "method": meta["method"], "id_set": cfg.id_data, "n_id": int(len(labels)),
        "n_ood": {k: len(v) for k, v in ood_sets.items()},
        "scores_fitted_on_id_train": [n for n in names if n in TRAIN_FITTED],
        "score_params": {"odin": {"T": ODIN_T, "eps": ODIN_EPS}, "energy": {"T": 1.0},
                         "react": {"percentile": REACT_PERCENTILE, "threshold": fitted.get("react_threshold")},
                         "knn": {"k": KNN_K}, "vim": {k: fitted["vim"][k] for k in ("dim", "alpha")}
                         if "vim" in fitted else {}},
    }
    title = f"{meta['arch']} ({meta['method'] or 'model'}) on {cfg.id_data}"
    return write_reports(cfg.out, id_scores, ood_scores, id_accuracy=id_accuracy, convention=cfg.convention,
                         title=title, extra=extra, stale_after_s=0.0)  # (the --out lock is held)
