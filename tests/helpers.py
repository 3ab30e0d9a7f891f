"""Helpers and fixtures shared by test modules in different folders (imported by name)."""

from __future__ import annotations

import csv
import json
import math
import os
import signal
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from clip_smot.clip.model import load_clip
from clip_smot.clip.prompt import PromptLearner
from clip_smot.clip.prompt_file import save_prompt

CLASSES = ["red", "green", "blue"]

ROOT = Path(__file__).resolve().parent.parent  # the repository


@pytest.fixture(autouse=True)
def _cache_in_tmp(tmp_path, monkeypatch):
    monkeypatch.setenv("CLIP_SMOT_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def tiny(tiny_clip_config, tiny_clip_checkpoint):
    return load_clip(tiny_clip_config, tiny_clip_checkpoint)


def make_prompt(path, clip, classnames=CLASSES, seed=0, identity=None):
    g = torch.Generator().manual_seed(seed)
    text = F.normalize(torch.randn(len(classnames), 32, generator=g), dim=-1)
    save_prompt(path, torch.randn(4, 32, generator=g), text, identity or clip.identity(), 4, "end", False,
                list(classnames), {"test": True})
    return text


def make_folders(root, n_per_class=4, n_ood=6, seed=0):
    """ID: root/id/val/<class>/*.png (a dominant colour channel); OOD: root/ood/x/y/*.jpg (noise)."""
    rng = np.random.default_rng(seed)
    for i, c in enumerate(CLASSES):
        (root / "id" / "val" / c).mkdir(parents=True)
        for k in range(n_per_class):
            a = rng.integers(0, 60, (40, 48, 3))
            a[..., i] += 150
            Image.fromarray(a.astype(np.uint8)).save(root / "id" / "val" / c / f"{k}.png")
    (root / "ood" / "x" / "y").mkdir(parents=True)
    for k in range(n_ood):
        Image.fromarray(rng.integers(0, 256, (36, 44, 3)).astype(np.uint8)).save(root / "ood" / "x" / "y" / f"{k}.jpg")
    return root / "id", root / "ood"


def read_csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def open_clip_encoding(clip, embeddings: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """open_clip's own code path over all 77 positions: its transformer with its float mask."""
    m = clip.model
    x = embeddings + m.positional_embedding
    x = m.transformer(x, attn_mask=m.attn_mask)
    x = m.ln_final(x)
    x = x[torch.arange(x.shape[0]), tokens.argmax(dim=-1)]  # pool at EOT
    return x @ m.text_projection


def flex_kernel_ran(learner: PromptLearner) -> bool:
    """BlockMasks were built: FlexAttention's kernel ran, not the dense mask."""
    built = [layout["masks"] for _, layout in learner.encoder._layouts.values()]
    return bool(built) and not any(isinstance(masks[0], torch.Tensor) for masks in built)


def random_ctx_(learner: PromptLearner, seed: int = 0) -> None:
    # larger than the N(0, 0.02) init so that the context really moves the features
    with torch.no_grad():
        learner.ctx.copy_(torch.randn(learner.ctx.shape, generator=torch.Generator().manual_seed(seed)))


def check_features_equal_open_clip(clip, learner: PromptLearner, csc: bool, class_position: str, share_prefix: bool,
                                   pack: bool) -> None:
    """A learner of 5 context tokens: its layout (prefix, tokens encoded) as ``share_prefix`` and
    ``pack`` say, and its features open_clip's over all 77 positions; a class-specific context
    moves its own class only."""
    names = learner.classnames
    random_ctx_(learner)
    full = learner.prompt_embeddings(full=True)
    assert full.shape == (len(names), 77, 32)
    expected = open_clip_encoding(clip, full, learner.tokens)
    assert learner.seq_len < 77 and learner.seq_len == int(learner.tokens.argmax(-1).max()) + 1
    shared = share_prefix and not csc and class_position == "end"
    assert learner.prefix_len == (1 + 5 if shared else 0)
    P, eot = learner.prefix_len, learner.tokens.argmax(-1)
    # packed: the prefix once, then each prompt up to its own EOT
    expected_tokens = P + int((eot + 1 - P).sum()) if pack else P + len(names) * (learner.seq_len - P)
    assert learner.tokens_encoded == expected_tokens
    torch.testing.assert_close(learner(), expected, atol=1e-5, rtol=0)
    if csc:  # a class-specific context really is per class: class 0's ctx moves class 0 only
        with torch.no_grad():
            before = learner()
            # not a constant shift: every LayerNorm would remove that exactly
            learner.ctx[0] += torch.randn(learner.ctx[0].shape, generator=torch.Generator().manual_seed(1))
            after = learner()
        assert not torch.allclose(before[0], after[0]) and torch.allclose(before[1:], after[1:], atol=1e-6)


def check_features_and_gradient_equal_open_clip(clip, learner: PromptLearner) -> None:
    """The learner's features and the gradient they send into the context: open_clip's."""
    random_ctx_(learner, seed=5)
    target = torch.randn(len(learner.classnames), 32, generator=torch.Generator().manual_seed(6))
    feats = learner()
    (feats * target).sum().backward()
    ours = learner.ctx.grad.clone()
    learner.ctx.grad = None
    expected = open_clip_encoding(clip, learner.prompt_embeddings(full=True), learner.tokens)
    torch.testing.assert_close(feats, expected, atol=1e-5, rtol=0)
    (expected * target).sum().backward()
    torch.testing.assert_close(ours, learner.ctx.grad, atol=1e-5, rtol=1e-4)


def check_flex_kernel_forward(clip, flex: PromptLearner, compiled: bool, csc: bool, class_position: str,
                              share_prefix: bool) -> None:
    """A learner of ``attention="flex"`` run on FlexAttention's kernel (compiled layers or not):
    open_clip's features, and the prefix shared as ``share_prefix`` says."""
    random_ctx_(flex, seed=3)
    flex.encoder.flex_kernel = True
    if compiled:
        flex.encoder.compile_layers()
    with torch.no_grad():
        ours = flex()
        expected = open_clip_encoding(clip, flex.prompt_embeddings(full=True), flex.tokens)
    assert flex_kernel_ran(flex)
    assert flex.prefix_len == (1 + flex.ctx.shape[-2] if share_prefix and not csc and class_position == "end" else 0)
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=0)


def open_clip_features_and_grad(clip, learner: PromptLearner) -> tuple[torch.Tensor, torch.Tensor]:
    """open_clip's own fp32 encoding of the learner's prompts (its transformer over all 77 positions
    with its float mask, ``ln_final``, EOT pooling, projection) and the gradient that
    ``features.square().sum()`` sends into the context (left cleared on the learner)."""
    ref = open_clip_encoding(clip, learner.prompt_embeddings(full=True), learner.tokens)
    ref.square().sum().backward()
    grad, learner.ctx.grad = learner.ctx.grad.clone(), None
    return ref, grad


def check_compiled_flex_on_gpu(clip, learner: PromptLearner, case) -> None:
    """A CUDA learner of ``attention="flex"``, its layers compiled: FlexAttention's kernel ran and
    gave open_clip's fp32 features and gradient."""
    learner.encoder.compile_layers()
    with torch.no_grad():
        learner.ctx.normal_(0, 1)
    ref, ref_grad = open_clip_features_and_grad(clip, learner)
    out = learner()
    out.square().sum().backward()
    assert flex_kernel_ran(learner), case
    assert ((out - ref).norm() / ref.norm()).item() < 1e-4, case
    assert ((learner.ctx.grad - ref_grad).norm() / ref_grad.norm()).item() < 1e-3, case


def _train_folder(root, n_per_class=17, seed=1):
    rng = np.random.default_rng(seed)
    for i, c in enumerate(CLASSES):
        (root / c).mkdir(parents=True)
        for k in range(n_per_class):
            a = rng.integers(0, 60, (34, 34, 3))
            a[..., i] += 150
            Image.fromarray(a.astype(np.uint8)).save(root / c / f"{k}.png")
    return root


def _torchrun(*args: str, timeout: float = 120) -> tuple[int, str, str]:
    """``torchrun --nproc_per_node 2 --standalone ARGS`` on the CPU (gloo): (exit code, stdout, stderr).
    A run still going after ``timeout`` seconds is killed (torchrun and both workers) and fails
    the test as a hang."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone", *args]
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         start_new_session=True)
    try:
        stdout, stderr = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        # The workers run in sessions of their own, out of reach of a kill of torchrun's group
        # (they would hold the pipes open, and this call, for ever); torchrun stops them on SIGTERM.
        p.terminate()
        try:
            p.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
        pytest.fail(f"torchrun {' '.join(args[:3])} still running after {timeout} s: a rank hangs")
    return p.returncode, stdout, stderr


@pytest.fixture(scope="session")
def cam_resnet(tmp_path_factory):
    """A torchvision ResNet state dict with one BasicBlock per stage and the 1000 ImageNet classes."""
    from torchvision.models.resnet import BasicBlock, ResNet

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("camnet") / "resnet10.pth"
    torch.save(ResNet(BasicBlock, [1, 1, 1, 1], num_classes=1000).state_dict(), path)
    return str(path)


WNIDS = ["n01440764", "n01443537", "n01484850"]  # tench, goldfish, great white shark (indices 0, 1, 2)


def _write_imagenet(root, n_per_class=4, wnids=WNIDS, size=(40, 36)):
    rng = np.random.default_rng(0)
    for w in wnids:
        d = root / "train" / w
        d.mkdir(parents=True)
        for i in range(n_per_class):
            a = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
            Image.fromarray(a).save(d / f"{w}_{i}.JPEG", quality=90)
    return root


def write_sparse_safetensors(path, header: dict) -> None:
    """A safetensors file whose ``header`` (name -> {"dtype", "shape"}, and "__metadata__")
    declares its tensors, data offsets set in the header's order, while the data is a hole:
    the file takes no disk and the test no memory, whatever the shapes."""
    size = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2}
    header, offset = dict(header), 0
    for name, tensor in list(header.items()):
        if name != "__metadata__":
            end = offset + size[tensor["dtype"]] * math.prod(tensor["shape"])
            header[name], offset = {**tensor, "data_offsets": [offset, end]}, end
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(len(text).to_bytes(8, "little") + text)
        f.truncate(8 + len(text) + offset)


def save_as_if_from_cuda(obj, path) -> None:
    """``torch.save(obj, path)`` as a machine with a GPU writes tensors that were on it: each
    storage's location recorded as "cuda:0". A file a user brings from a GPU machine; read without
    ``map_location`` where CUDA is not there, torch refuses it."""
    import torch.serialization

    real = torch.serialization.location_tag
    torch.serialization.location_tag = lambda storage: "cuda:0"
    try:
        torch.save(obj, path)
    finally:
        torch.serialization.location_tag = real
    if not torch.cuda.is_available():  # (the file is what it says: torch.load alone needs CUDA)
        try:
            torch.load(path, weights_only=True)
        except RuntimeError as e:
            assert "CUDA" in str(e), e
        else:
            raise AssertionError(f"{path}: read without CUDA")


def torchscript_as_if_from_cuda(src, dst) -> None:
    """The TorchScript archive ``src`` rewritten at ``dst`` as if its tensors had been on a GPU
    when it was saved: each storage's location in the archive's pickles "cuda:0", not "cpu"
    (torch.jit.save writes them from C++, past torch.serialization). Read without ``map_location``
    where CUDA is not there, torch.jit.load refuses it."""
    import zipfile

    cpu, gpu, moved = b"X\x03\x00\x00\x00cpu", b"X\x06\x00\x00\x00cuda:0", 0  # (pickle's BINUNICODE)
    with zipfile.ZipFile(src) as z, zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as out:
        for info in z.infolist():
            data = z.read(info.filename)
            if info.filename.endswith(".pkl"):
                moved += data.count(cpu)
                data = data.replace(cpu, gpu)
            out.writestr(info, data)
    assert moved, f"{src}: no tensor's location found"
    if not torch.cuda.is_available():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # (torch.jit's deprecation)
                torch.jit.load(str(dst))
        except RuntimeError:
            pass
        else:
            raise AssertionError(f"{dst}: read without CUDA")


# safetensors' names of torch's dtypes (those the tests write)
_SAFETENSORS_DTYPES = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.float8_e4m3fn: "F8_E4M3", torch.float8_e5m2: "F8_E5M2", torch.complex64: "C64",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
    torch.bool: "BOOL",
}


def save_safetensors_by_hand(path, tensors: dict, metadata: dict | None = None) -> None:
    """``safetensors.torch.save_file``, written by hand: the format's 8-byte header length, its
    JSON header, the tensors' bytes. The tests' odd dtypes (complex64, float8) are past what
    safetensors' own save_file writes at the floor that pyproject.toml allows (0.4.0:
    KeyError torch.complex64; complex from 0.7 on)."""
    header, chunks, offset = {}, [], 0
    if metadata is not None:
        header["__metadata__"] = metadata
    for name, t in tensors.items():
        data = t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
        header[name] = {"dtype": _SAFETENSORS_DTYPES[t.dtype], "shape": list(t.shape),
                        "data_offsets": [offset, offset + len(data)]}
        chunks.append(data)
        offset += len(data)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(len(text).to_bytes(8, "little") + text + b"".join(chunks))


def safetensors_reads(dtype: torch.dtype, tmp_path) -> bool:
    """Whether the installed safetensors reads a tensor of ``dtype`` (below 0.7 its header parser
    refuses C64, below 0.4.2 float8): where it does not, a file holding one is 'not a
    safetensors file' to the loaders, in safetensors' own words."""
    from safetensors import SafetensorError, safe_open

    path = Path(tmp_path) / f"probe-{_SAFETENSORS_DTYPES[dtype]}.safetensors"
    save_safetensors_by_hand(path, {"t": torch.zeros(2, dtype=dtype)})
    try:
        with safe_open(str(path), framework="pt") as f:
            f.get_tensor("t")
    except (SafetensorError, ValueError, TypeError):
        return False
    return True


def guarded_safe_open(real_open, refused=lambda shape: True):
    """A ``safe_open`` (wrapping ``real_open``) that fails the test when a tensor whose shape
    ``refused`` holds is loaded: what a check must refuse from the header alone."""

    class Guarded:
        def __init__(self, *args, **kwargs):
            self.f = real_open(*args, **kwargs)

        def __enter__(self):
            self.f.__enter__()
            return self

        def __exit__(self, *exc):
            return self.f.__exit__(*exc)

        def __getattr__(self, name):
            if name != "get_tensor":
                return getattr(self.f, name)

            def get_tensor(key):
                if refused(self.f.get_slice(key).get_shape()):
                    raise AssertionError("a tensor was loaded before its shape was checked")
                return self.f.get_tensor(key)

            return get_tensor

    return Guarded


def warnings_main_lets_through(monkeypatch, emit) -> list[str]:
    """The messages of the warnings that the console entry point, ``clip_smot.cli.main``, lets
    through of those ``emit()`` gives, followed by a plain UserWarning "another" (which it must
    let through): ``emit`` runs where the command would, every warning shown (main's filters are
    undone after)."""
    import warnings

    import clip_smot.cli as cli_module

    seen = []

    def run(prog_name):
        with warnings.catch_warnings(record=True) as caught:
            emit()
            warnings.warn("another", UserWarning)
        seen.extend(str(w.message) for w in caught)

    monkeypatch.setattr(cli_module, "cli", run)
    previous = signal.getsignal(signal.SIGINT)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            cli_module.main()
    finally:  # (main leaves its SIGINT handler for the interpreter's shutdown: not this one's)
        signal.signal(signal.SIGINT, previous)
    return seen


def flip_byte_of_entry(path, suffix: str, at: int) -> str:
    """Flip (xor 0xFF) the byte ``at`` of the data of the zip entry of ``path`` whose name ends
    with ``suffix`` (stored, as torch.save stores tensors); its directory's CRC-32 is left. The
    entry's name."""
    import struct
    import zipfile

    with zipfile.ZipFile(path) as z:
        info = next(i for i in z.infolist() if i.filename.endswith(suffix))
    raw = bytearray(Path(path).read_bytes())
    name_len, extra_len = struct.unpack("<HH", raw[info.header_offset + 26:info.header_offset + 30])
    raw[info.header_offset + 30 + name_len + extra_len + at] ^= 0xFF
    Path(path).write_bytes(bytes(raw))
    return info.filename
