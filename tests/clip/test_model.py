import json
import os
import time
import zipfile
from pathlib import Path

import pytest
import torch

from clip_smot.clip.model import IMAGENET_CLASSNAMES, load_clip
from clip_smot.common.errors import UserError


def test_local_checkpoint_loads_frozen(tiny_clip_config, tiny_clip_checkpoint):
    from safetensors.torch import load_file

    clip = load_clip(tiny_clip_config, tiny_clip_checkpoint)
    assert clip.name == "clip-smot-tiny" and clip.pretrained == "tiny.safetensors"
    assert len(clip.checkpoint_sha256) == 64
    assert not clip.model.training
    assert all(not p.requires_grad for p in clip.model.parameters())
    ref = load_file(tiny_clip_checkpoint)
    torch.testing.assert_close(clip.model.token_embedding.weight, ref["token_embedding.weight"])
    assert clip.image_size == 32 and len(clip.mean) == 3
    assert clip.identity()["model"] == "clip-smot-tiny"
    assert len(IMAGENET_CLASSNAMES) == 1000


def test_random_weights_are_the_same_each_time(tiny_clip_config, monkeypatch):
    """--pretrained none: the weights were drawn from the caller's RNG, so two fits with the same
    --seed differed, and a resumed or exported run re-encoded its context with other weights
    (an outside audit: text features 0.64 apart, with nothing said). They come from a fixed seed
    now, whatever the RNG holds, which is left as it was."""
    torch.manual_seed(1)
    first = load_clip(tiny_clip_config, "none").model.state_dict()
    state = torch.get_rng_state()
    torch.manual_seed(2)
    second = load_clip(tiny_clip_config, None).model.state_dict()
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)
    torch.manual_seed(1)
    assert torch.equal(torch.get_rng_state(), state)  # (building the model drew nothing from it)
    reseeded = []  # the CUDA generators are not reseeded either (torch.manual_seed does that, unrestored)
    monkeypatch.setattr(torch.cuda, "manual_seed_all", lambda seed: reseeded.append(seed))
    load_clip(tiny_clip_config, "none")
    assert reseeded == []


def test_random_weights_are_built_without_open_clips_note(tiny_clip_config, caplog):
    """--pretrained none asks for random weights, and every command built with them (fit, score,
    eval, export) printed open_clip's "WARNING:root:No pretrained weights loaded for model
    'clip-smot-tiny'. Model initialized randomly." on stderr; the logging of later models is as it was."""
    import logging

    with caplog.at_level(logging.WARNING):
        load_clip(tiny_clip_config, "none")
        logging.getLogger().warning("another")
    assert [r.getMessage() for r in caplog.records] == ["another"]


def test_offline_tag_fails_fast_with_a_clear_message(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HOME", str(tmp_path))  # (no OpenAI clip package's download there: the message names it)
    start = time.monotonic()
    with pytest.raises(UserError, match=r"ViT-B-16.*openai.*local checkpoint") as e:
        load_clip("ViT-B-16", "openai")
    assert time.monotonic() - start < 5
    # OpenAI's weights in a state dict say nothing of their QuickGELU: the -quickgelu name does
    assert str(e.value).endswith("e.g. --model ViT-B-16-quickgelu --pretrained path/to/ViT-B-16.safetensors "
                                 "(or OpenAI's own ViT-B-16.pt with --model ViT-B-16)")


def test_offline_a_gelu_tag_is_not_sent_to_the_quickgelu_model(monkeypatch):
    """laion2b_s34b_b88k's config sets no quick_gelu (open_clip builds ViT-B-16 with GELU): the
    offline message's example keeps --model ViT-B-16, not ViT-B-16-quickgelu (which would build
    QuickGELU for weights trained with GELU), and names no OpenAI file."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError) as e:
        load_clip("ViT-B-16", "laion2b_s34b_b88k")
    assert str(e.value).endswith("e.g. --model ViT-B-16 --pretrained path/to/ViT-B-16.safetensors")
    # dfn2b says quick_gelu; the model named already is the -quickgelu one: no second suffix
    with pytest.raises(UserError) as e:
        load_clip("ViT-B-16-quickgelu", "dfn2b")
    assert str(e.value).endswith("e.g. --model ViT-B-16-quickgelu --pretrained path/to/ViT-B-16-quickgelu.safetensors")


def test_a_tag_is_a_tag_beside_a_file_of_its_name(tmp_path, monkeypatch):
    """--pretrained openai in a folder holding a file named openai loaded that file as the tag's
    weights (and a prompt's recorded tag did the same); a tag is a tag, the file is ./openai."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "openai").write_bytes(b"not the openai weights")
    with pytest.raises(UserError) as e:
        load_clip("ViT-B-16", "openai")
    assert str(e.value).startswith("--pretrained openai: the weights of ViT-B-16 (openai) are not cached")
    assert str(e.value).endswith("; a file of that name is given as ./openai")
    with pytest.raises(UserError, match=r"^--model ViT-B-16 --pretrained \./openai: could not load the weights"):
        load_clip("ViT-B-16", "./openai")


def test_a_hugging_face_tokenizer_that_cannot_load_is_one_line_before_the_model_is_built(monkeypatch):
    """--model ViT-B-16-SigLIP (a name of open_clip's registry, whose tokenizer comes from the
    Hugging Face hub) offline, or without the transformers package, built the whole model, then
    died in a traceback from open_clip's get_tokenizer (fit, score, eval --zero-shot alike)."""
    import open_clip

    def offline(name, **kwargs):
        raise OSError("We couldn't connect to 'https://huggingface.co' to load the files, and couldn't find them\n"
                      "in the cached files.")

    monkeypatch.setattr(open_clip, "get_tokenizer", offline)
    monkeypatch.setattr(open_clip, "create_model", lambda *a, **k: pytest.fail("built before its tokenizer"))
    with pytest.raises(UserError) as e:
        load_clip("ViT-B-16-SigLIP", None)
    assert str(e.value) == ("--model ViT-B-16-SigLIP: could not load its Hugging Face tokenizer timm/ViT-B-16-SigLIP "
                            "(We couldn't connect to 'https://huggingface.co' to load the files, and couldn't find them)")


@pytest.mark.parametrize(
    "model, pretrained, match",
    [
        # the tags it knows are listed (open_clip's own ViT-B-16 has OpenAI's weights among them)
        ("ViT-B-16", "not-a-tag", r"^--pretrained not-a-tag: not a pretrained tag of ViT-B-16 \(known tags: .*\bopenai\b"),
        ("ViT-B-16", "missing/weights.pt", "no such checkpoint file"),
        # a file's suffix or folder says it is a file: not called an unknown tag
        ("ViT-B-16", "weights.pth", r"^--pretrained weights.pth: no such checkpoint file$"),
        ("ViT-B-16", "missing/weights", r"^--pretrained missing/weights: no such checkpoint file$"),
        ("No-Such-Model", None, "unknown open_clip model"),
        ("missing/config.json", None, "no such model-config JSON"),
    ],
)
def test_bad_model_or_weights(model, pretrained, match):
    with pytest.raises(UserError, match=match):
        load_clip(model, pretrained)


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_damaged_checkpoint_file_is_one_line(tiny_clip_config, tmp_path, suffix):
    bad = tmp_path / f"weights{suffix}"
    bad.write_bytes(b"not a checkpoint at all")
    with pytest.raises(UserError, match=rf"--pretrained {bad}: could not load the weights") as info:
        load_clip(tiny_clip_config, str(bad))
    assert "\n" not in str(info.value)


def test_an_open_clip_state_dict_saved_by_torch_is_built_as_its_config_says(tiny_clip_checkpoint, tmp_path):
    """Only OpenAI's own files (a TorchScript archive, or a state dict still holding its
    ``input_resolution`` ...) imply QuickGELU: open_clip's own state dict in torch.save's zip
    format, beside a config without quick_gelu, is built with GELU."""
    from safetensors.torch import load_file

    from conftest import TINY_CLIP_CONFIG

    config = tmp_path / "clip-smot-tiny-gelu.json"
    config.write_text(json.dumps({**TINY_CLIP_CONFIG, "quick_gelu": False}))
    weights = tmp_path / "open_clip_state.pt"
    torch.save(load_file(tiny_clip_checkpoint), weights)
    assert zipfile.is_zipfile(weights)
    clip = load_clip(str(config), str(weights))
    assert clip.activation == "gelu" and clip.identity()["activation"] == "gelu"
    assert isinstance(clip.model.transformer.resblocks[0].mlp.gelu, torch.nn.GELU)


class _MakesAFolder:
    """Unpickled, it makes a folder: what any code in a hostile checkpoint's pickle could do."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (os.mkdir, (self.path,))


def test_a_checkpoint_whose_pickle_runs_code_is_refused_without_running_it(tiny_clip_config, tmp_path):
    """A .pt file is a pickle: read with ``weights_only=False``, one naming os.mkdir (or anything
    else) runs it. Every read of it (the check for complex tensors, the check for OpenAI's extra
    entries, which this file holds, and the load) refuses it in one line; nothing runs."""
    ran = tmp_path / "ran"
    evil = tmp_path / "evil.pt"
    torch.save({"input_resolution": torch.tensor(224), "x": _MakesAFolder(str(ran))}, evil)
    assert zipfile.is_zipfile(evil) and not ran.exists()
    with pytest.raises(UserError, match=rf"^--model clip-smot-tiny --pretrained {evil}: could not load the weights "
                                        r"\(Weights only load failed") as e:
        load_clip(tiny_clip_config, str(evil))
    assert "\n" not in str(e.value) and not ran.exists()


@pytest.mark.parametrize("names", [["data.pkl"], ["constants.pkl", "data.pkl"]])
def test_a_zip_whose_entries_sit_in_no_folder_is_one_line(tiny_clip_config, tmp_path, names):
    """torch's archives keep every entry in one folder (``archive/data.pkl``); a zip given as
    weights whose entries sit at its top (a TorchScript archive's ``constants.pkl`` among them, or
    not) is refused in one line, not a traceback of the archive checks."""
    path = tmp_path / "flat.pt"
    with zipfile.ZipFile(path, "w") as z:
        for name in names:
            z.writestr(name, b"not a pickle")
    with pytest.raises(UserError, match=rf"^--model clip-smot-tiny --pretrained {path}: could not load the weights"):
        load_clip(tiny_clip_config, str(path))


def test_checkpoint_of_another_architecture_is_one_line(tiny_clip_config, tiny_clip_checkpoint, tmp_path):
    from safetensors.torch import load_file, save_file

    state = load_file(tiny_clip_checkpoint)
    state["token_embedding.weight"] = state["token_embedding.weight"][:, :8].contiguous()  # wrong width
    save_file(state, str(tmp_path / "other.safetensors"))
    with pytest.raises(UserError, match="could not load the weights"):
        load_clip(tiny_clip_config, str(tmp_path / "other.safetensors"))


@pytest.mark.parametrize("model", ["hf-hub:", "hf-hub:x", "hf-hub:laion/CLIP-ViT-B-16-laion2B-s34B-b88K",
                                   "local-dir:", "local-dir:x", "local-dir:/tmp"])
def test_a_hub_or_folder_model_name_is_one_line(model):
    """open_clip's schema names are refused before open_clip reads them: "hf-hub:" was a ValueError
    traceback, "hf-hub:x" and "local-dir:x" a download or a FileNotFoundError, and a name with a
    slash was looked for as a config file."""
    with pytest.raises(UserError, match=rf"^--model {model}: open_clip's hf-hub: and local-dir: names are not "
                                        "supported; give an architecture name"):
        load_clip(model, "none")


@pytest.mark.parametrize("kind", ["pt", "safetensors", "wrapped"])
def test_a_weights_file_that_holds_no_tensors_says_so(tiny_clip_config, tmp_path, kind):
    """An empty state dict (a torch.save of {}, a safetensors file with no tensor, or {} under
    "state_dict") is refused saying it holds no tensors, not with the bare "StopIteration" that
    open_clip's loader raises reading its first key."""
    from safetensors.torch import save_file

    path = tmp_path / f"empty.{'safetensors' if kind == 'safetensors' else 'pt'}"
    if kind == "safetensors":
        save_file({}, str(path))
    else:
        torch.save({"state_dict": {}} if kind == "wrapped" else {}, path)
    with pytest.raises(UserError, match=rf"^--model clip-smot-tiny --pretrained {path}: could not load the weights "
                                        r"\(the file holds no tensors\)$"):
        load_clip(tiny_clip_config, str(path))


def test_a_weights_file_larger_than_half_the_memory_is_refused_before_loading(tiny_clip_config, tiny_clip_checkpoint,
                                                                              tmp_path, monkeypatch):
    """open_clip loads every tensor of a --pretrained file before it compares any with the model: a
    sparse safetensors file (7 MB on disk) declaring 16 GB beside the tiny weights was read into
    memory whole before its extra tensor was refused. Here the machine has 64 MiB and the file
    declares 40 MiB of it (no disk: a hole); the tiny weights themselves still load."""
    from helpers import write_sparse_safetensors
    from safetensors import safe_open

    import clip_smot.clip.model as cm
    import clip_smot.common.device as device

    for module in (cm, device):  # (the architecture's check, the file's)
        monkeypatch.setattr(module, "physical_memory", lambda: 64 << 20)
    with safe_open(tiny_clip_checkpoint, "pt") as f:
        header = {k: {"dtype": "F32", "shape": list(f.get_slice(k).get_shape())} for k in f.keys()}
    write_sparse_safetensors(tmp_path / "sparse.safetensors", {**header, "junk": {"dtype": "F32", "shape": [10 << 20]}})

    def no_load(*args, **kwargs):
        raise AssertionError("the file was loaded")

    monkeypatch.setattr("open_clip.factory.load_state_dict", no_load)
    with pytest.raises(UserError, match=rf"^--pretrained {tmp_path / 'sparse.safetensors'}: the file is 0.0 GiB, more "
                                        r"than half of this machine's 0.1 GiB; not loaded$"):
        load_clip(tiny_clip_config, str(tmp_path / "sparse.safetensors"))
    monkeypatch.undo()
    for module in (cm, device):
        monkeypatch.setattr(module, "physical_memory", lambda: 64 << 20)
    assert load_clip(tiny_clip_config, tiny_clip_checkpoint).checkpoint_sha256


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_a_complex_weight_is_refused_not_cast_to_its_real_part(tiny_clip_config, tiny_clip_checkpoint, tmp_path,
                                                               suffix):
    """A --pretrained file whose text_projection was complex loaded, its imaginary part dropped,
    with torch's C++ warning 'Casting complex values to real discards the imaginary part' on
    stderr, and fit ran on it: it is one line, before open_clip loads anything."""
    import warnings

    from helpers import save_safetensors_by_hand
    from safetensors.torch import load_file

    state = load_file(tiny_clip_checkpoint)
    state["text_projection"] = state["text_projection"].to(torch.complex64)
    path = tmp_path / f"complex{suffix}"
    save_safetensors_by_hand(path, state) if suffix == ".safetensors" else torch.save(state, path)
    dtype = "C64" if suffix == ".safetensors" else "torch.complex64"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(UserError, match=rf"^--pretrained {path}: text_projection is of dtype {dtype}, not a "
                                            r"(dense )?real-valued tensor; not loaded$"):
            load_clip(tiny_clip_config, str(path))


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_an_integer_weight_where_the_model_keeps_floats_is_refused(tiny_clip_config, tiny_clip_checkpoint, tmp_path,
                                                                   suffix):
    """A --pretrained file whose float32 bias the header called U32 (a seeded fuzz of the weights)
    was read as integers near 1e9, cast to floats and scored, exit 0 (ID accuracy 33% for 67%); a
    weight saved as integers (an int8 file without its scales) the same. It is one line, before
    open_clip loads anything; an integer buffer of the model's own (BatchNorm's step count) is not
    refused."""
    import json
    import struct

    from safetensors.torch import load_file

    key = "visual.transformer.resblocks.0.mlp.c_fc.bias"
    path = tmp_path / f"int{suffix}"
    if suffix == ".safetensors":
        raw = open(tiny_clip_checkpoint, "rb").read()
        n = struct.unpack("<Q", raw[:8])[0]
        header = json.loads(raw[8:8 + n])
        header[key]["dtype"] = "U32"
        text = json.dumps(header).encode()
        text += b" " * (-len(text) % 8)
        path.write_bytes(struct.pack("<Q", len(text)) + text + raw[8 + n:])
    else:
        state = load_file(tiny_clip_checkpoint)
        torch.save({**state, key: state[key].to(torch.int8)}, path)
    dtype = "U32" if suffix == ".safetensors" else "torch.int8"
    with pytest.raises(UserError, match=rf"^--pretrained {path}: {key} is of dtype {dtype}, not floating-point numbers "
                                        r"as the model's weight; not loaded$"):
        load_clip(tiny_clip_config, str(path))
    from clip_smot.clip.model import _integer_weight

    assert _integer_weight("RN50", {"visual.bn1.num_batches_tracked": False, "visual.bn1.weight": True},
                           {"visual.bn1.num_batches_tracked": "I64", "visual.bn1.weight": "F32"}) is None


@pytest.mark.filterwarnings("ignore:Validating sparse tensor invariants")  # (torch's, on loading; the CLI filters it)
def test_a_sparse_weight_or_an_entry_that_is_no_tensor_is_one_line(tiny_clip_config, tiny_clip_checkpoint, tmp_path):
    """In torch.save's format a weight may be sparse (loading would densify what no open_clip
    weight is) and an entry may be no tensor at all (a training script's ``epoch``): the first is
    refused before open_clip loads anything, the second in open_clip's own words; neither is a
    traceback of the checks that look at every entry."""
    from safetensors.torch import load_file

    state = load_file(tiny_clip_checkpoint)
    sparse = tmp_path / "sparse.pt"
    torch.save({**state, "text_projection": state["text_projection"].to_sparse()}, sparse)
    with pytest.raises(UserError, match=rf"^--pretrained {sparse}: text_projection is a torch.sparse_coo tensor, not "
                                        r"a dense real-valued tensor; not loaded$"):
        load_clip(tiny_clip_config, str(sparse))
    epoch = tmp_path / "epoch.pt"
    torch.save({**state, "epoch": 3}, epoch)
    with pytest.raises(UserError, match=rf"^--model clip-smot-tiny --pretrained {epoch}: could not load the weights "
                                        r"\(.*Unexpected key\(s\) in state_dict: \"epoch\""):
        load_clip(tiny_clip_config, str(epoch))
    bare = tmp_path / "bare.pt"
    torch.save(torch.zeros(3), bare)  # (no state dict at all: nothing to look up by name)
    with pytest.raises(UserError, match=rf"^--model clip-smot-tiny --pretrained {bare}: could not load the weights"):
        load_clip(tiny_clip_config, str(bare))


def test_a_prompts_model_name_must_be_a_plain_name_and_its_config_errors_name_it():
    """load_clip_for_prompt registers the stored config as NAME.json in a temporary folder: a name
    with a folder in it is refused before anything is written; a malformed stored config is
    named as the prompt's model (no --prompt given)."""
    from conftest import TINY_CLIP_CONFIG

    from clip_smot.clip.model import load_clip_for_prompt

    with pytest.raises(UserError, match=r"^prompt metadata 'model': '\.\./escape' is not a plain name"):
        load_clip_for_prompt("../escape", TINY_CLIP_CONFIG, None)
    with pytest.raises(UserError, match=r"^prompt model clip-smot-tiny-broken: model_config.embed_dim must be a "
                                        r"positive integer, not 0$"):
        load_clip_for_prompt("clip-smot-tiny-broken", {**TINY_CLIP_CONFIG, "embed_dim": 0}, None)


def test_an_architecture_too_big_for_memory_is_refused_before_allocating(tmp_path):
    """A config JSON (or one a prompt stores) may declare any width: open_clip would allocate it
    all. It is built on the meta device and refused in one line when its fp32 weights would take
    more than half of the machine's memory; an image size out of range is refused too."""
    import time

    from conftest import TINY_CLIP_CONFIG

    from clip_smot.common.device import physical_memory
    from clip_smot.common.errors import UserError

    huge = {**TINY_CLIP_CONFIG, "text_cfg": {**TINY_CLIP_CONFIG["text_cfg"], "width": 2**20, "heads": 2}}
    path = tmp_path / "huge-clip.json"
    path.write_text(json.dumps(huge))
    t0 = time.perf_counter()
    # the 2 text blocks alone: 12 x (2^20)^2 fp32 weights each, 96 TiB; more than half of any machine's
    # memory (width 2^16 was 0.4 TB: a server with 1 TB of memory would have built it on the meta device)
    assert physical_memory() < 2 * (2 * 12 * 2**40 * 4)
    with pytest.raises(UserError, match=rf"^--model {path}: its weights would take (at least )?\d+\.\d GiB in fp32, "
                                        "more than half"):
        load_clip(str(path), None)
    assert time.perf_counter() - t0 < 20
    for size in (4, 7, 2049, 100000, "224"):
        cfg = {**TINY_CLIP_CONFIG, "vision_cfg": {**TINY_CLIP_CONFIG["vision_cfg"], "image_size": size}}
        bad = tmp_path / f"size-{size}.json"
        bad.write_text(json.dumps(cfg))
        with pytest.raises(UserError, match=rf"^--model {bad}: vision_cfg.image_size .* is not in \[8, 2048\]$"):
            load_clip(str(bad), None)


BAD_CONFIGS = [  # (what replaces the tiny config, the error after "--model FILE: ")
    # each was an AttributeError ('list' object has no attribute 'get', 'str' object ...)
    ([1, 2], r"the model config must be a JSON object \(an open_clip model config\), not list$"),
    # (not open_clip's pretrained layout, which is an object holding a model_cfg)
    (["model_cfg"], r"the model config must be a JSON object \(an open_clip model config\), not list$"),
    ({"vision_cfg": "x"}, r"vision_cfg must be a JSON object, not 'x'$"),
    ({"text_cfg": [1]}, r"text_cfg must be a JSON object, not \[1\]$"),
    ({"embed_dim": None}, r"embed_dim must be a positive integer, not None$"),
    # the temperature's start, which random weights keep: inf was refused as the fault of "--pretrained (none:
    # random weights)"; null and a string stopped open_clip's build ("unsupported operand type(s) for *")
    *(({"init_logit_scale": v}, r"init_logit_scale must be a number from -87.34 to 88.72 \(exp\(init_logit_scale\), the "
                                rf"temperature, a normal float32; CLIP's is ln\(1 / 0.07\) = 2.659\), not {shown}$")
      for v, shown in ((float("inf"), "inf"), (-88.0, "-88.0"), (None, "None"), ("2.6", "'2.6'"), (True, "True"))),
    ({"init_logit_bias": "x"}, r"init_logit_bias must be a finite number or null, not 'x'$"),
    ({"init_logit_bias": float("nan")}, r"init_logit_bias must be a finite number or null, not nan$"),
    ({"text_cfg": {"width": "32"}}, r"text_cfg.width must be a positive integer, not '32'$"),
    ({"vision_cfg": {"patch_size": "8"}}, r"vision_cfg.patch_size must be a positive integer, not '8'$"),
    # no tokens, or a vocabulary of none: refused here (the size checks below would read a 0 as the default)
    ({"text_cfg": {"context_length": 0}}, r"text_cfg.context_length must be a positive integer, not 0$"),
    ({"text_cfg": {"vocab_size": 0}}, r"text_cfg.vocab_size must be a positive integer, not 0$"),
    ({"text_cfg": {"layers": 0}}, r"text_cfg.layers must be a positive integer, not 0$"),
    ({"vision_cfg": {"layers": [3, "4"]}}, r"vision_cfg.layers must be a positive integer \(a ResNet: a list of them\)"),
    ({"vision_cfg": {"mlp_ratio": float("inf")}}, r"vision_cfg.mlp_ratio must be a positive number, not inf$"),
    # JSON's true is a Python int too: not a size of 1, nor a ratio of 1
    ({"text_cfg": {"heads": True}}, r"text_cfg.heads must be a positive integer, not True$"),
    ({"vision_cfg": {"mlp_ratio": True}}, r"vision_cfg.mlp_ratio must be a positive number, not True$"),
    # a string is true to open_clip: "false" built QuickGELU, silently, and the prompt recorded it so
    ({"quick_gelu": "false"}, r"quick_gelu must be true or false, not 'false'$"),
    # built on the meta device block by block: 20000 took minutes and gigabytes, 10**6 an hour
    ({"vision_cfg": {"layers": 20000}}, r"vision_cfg.layers: 20000 blocks, more than 1024 "),
    ({"vision_cfg": {"layers": 1025}}, r"vision_cfg.layers: 1025 blocks, more than 1024 "),
    ({"vision_cfg": {"layers": [10**6, 1, 1, 1]}}, r"vision_cfg.layers: 1000003 blocks, more than 1024 "),
    ({"text_cfg": {"layers": 10**6}}, r"text_cfg.layers: 1000000 blocks, more than 1024 "),
    # within the block limit, but far beyond any memory: estimated from the numbers, nothing built
    ({"vision_cfg": {"layers": 1000, "width": 2**14}}, r"its weights would take at least \d+\.\d GiB in fp32, more than half"),
    ({"text_cfg": {"context_length": 10**7}}, r"its weights would take at least \d+\.\d GiB in fp32, more than half"),
    # a million patch tokens: small weights, but one image took minutes (or all memory, a traceback)
    ({"vision_cfg": {"image_size": 1024, "patch_size": 1}},
     r"vision_cfg: image_size 1024 in patches of 1 is 1048576 patch tokens, more than 4096 "),
    ({"vision_cfg": {"image_size": [40, 2048], "patch_size": 4}}, r"vision_cfg: .* is 5120 patch tokens, more than 4096 "),
    ({"vision_cfg": {"image_size": [136, 1928], "patch_size": 8}}, r"vision_cfg: .* is 4097 patch tokens, more than 4096 "),
    # RuntimeError "Kernel size can't be greater than actual input size" at the first image
    ({"vision_cfg": {"image_size": 32, "patch_size": 64}}, r"vision_cfg.patch_size 64 is larger than the image \(32\)$"),
    # token ids past the embedding: IndexError at the prompt's first encoding
    ({"text_cfg": {"vocab_size": 5}}, r"text_cfg.vocab_size 5 is less than the 49408 tokens of open_clip's tokenizer$"),
    ({"text_cfg": {"vocab_size": 49407}}, r"text_cfg.vocab_size 49407 is less than the 49408 tokens of open_clip's "),
    # passed to LayerNorm and GELU as they are: TypeError tracebacks at the first image or prompt
    ({"vision_cfg": {"norm_kwargs": {"eps": "x"}}}, r"vision_cfg.norm_kwargs may set only eps, a positive number, "
                                                    r"not \{'eps': 'x'\}$"),
    ({"text_cfg": {"norm_kwargs": {"eps": 1e-6, "device": "cuda"}}}, r"text_cfg.norm_kwargs may set only eps"),
    ({"text_cfg": {"norm_kwargs": [1]}}, r"text_cfg.norm_kwargs may set only eps"),
    # lists of the allowed keys' names: no objects (AttributeError: 'list' object has no attribute 'get')
    ({"text_cfg": {"norm_kwargs": ["eps"]}}, r"text_cfg.norm_kwargs may set only eps, a positive number, not \['eps'\]$"),
    ({"vision_cfg": {"act_kwargs": ["approximate"]}},
     r"vision_cfg.act_kwargs may set only approximate, 'none' or 'tanh' \(GELU's\), not \['approximate'\]$"),
    ({"vision_cfg": {"act_kwargs": {"approximate": "x"}}}, r"vision_cfg.act_kwargs may set only approximate, "),
    ({"vision_cfg": {"act_kwargs": {"approximate": "none", "inplace": True}}},
     r"vision_cfg.act_kwargs may set only approximate, 'none' or 'tanh' \(GELU's\), not \{'approximate': 'none', "),
    ({"text_cfg": {"act_kwargs": {"approximate": "tanh"}}}, r"text_cfg.act_kwargs sets GELU's approximate, but "
                                                            "quick_gelu builds QuickGELU"),
    # open_clip's PatchDropout asserts 0 <= p < 1 (and compares p with 0 first): each was "open_clip
    # cannot build this architecture (AssertionError)" or a TypeError's words, naming no key
    ({"vision_cfg": {"patch_dropout": 1.0}}, r"vision_cfg.patch_dropout must be a number in \[0, 1\), not 1.0$"),
    ({"vision_cfg": {"patch_dropout": 10**400}}, r"vision_cfg.patch_dropout must be a number in \[0, 1\), not 1000"),
    ({"vision_cfg": {"patch_dropout": True}}, r"vision_cfg.patch_dropout must be a number in \[0, 1\), not True$"),
    ({"vision_cfg": {"patch_dropout": "0.5"}}, r"vision_cfg.patch_dropout must be a number in \[0, 1\), not '0.5'$"),
    ({"vision_cfg": {"patch_dropout": None}}, r"vision_cfg.patch_dropout must be a number in \[0, 1\), not None$"),
    ({"vision_cfg": {"patch_dropout": -0.1}}, r"vision_cfg.patch_dropout must be a number in \[0, 1\), not -0.1$"),
    # open_clip's own tokenizer would read the file that bpe_path names
    ({"text_cfg": {"tokenizer_kwargs": {"bpe_path": "/etc/passwd"}}}, r"text_cfg.tokenizer_kwargs .*: open_clip's own "
                                                                      "tokenizer takes none"),
    # outside CoCa, encoders that give no one feature per image or text: a tuple, every token, or 77
    # tokens against 78 positions (AttributeError, ValueError, RuntimeError at the first image or prompt)
    ({"vision_cfg": {"output_tokens": True}}, r"vision_cfg.output_tokens True: open_clip's CLIP would not give one "
                                              r"feature per image and per text with it \(only CoCa"),
    ({"text_cfg": {"output_tokens": True}}, r"text_cfg.output_tokens True: open_clip's CLIP would not give one"),
    ({"vision_cfg": {"pool_type": "none"}}, r"vision_cfg.pool_type 'none': open_clip's CLIP would not give one"),
    ({"text_cfg": {"pool_type": "none"}}, r"text_cfg.pool_type 'none': open_clip's CLIP would not give one"),
    ({"vision_cfg": {"attentional_pool": "parallel"}}, r"vision_cfg.attentional_pool 'parallel': open_clip's CLIP"),
    ({"text_cfg": {"embed_cls": True}}, r"text_cfg.embed_cls True: open_clip's CLIP would not give one"),
    # a 0, [] or null given is what open_clip builds with, not its default (the checks took it so):
    # ValueError "height and width must be > 0" at the first image, an IndexError for no blocks,
    # TypeErrors building (named by the build's line, once built) or making the tokenizer
    ({"vision_cfg": {"image_size": 0}}, r"vision_cfg.image_size 0 is not in \[8, \d+\]$"),
    ({"vision_cfg": {"image_size": None}}, r"vision_cfg.image_size None is not in \[8, \d+\]$"),
    ({"vision_cfg": {"layers": 0}}, r"vision_cfg.layers must be a positive integer \(a ResNet: a list of them\), not 0$"),
    ({"vision_cfg": {"layers": []}}, r"vision_cfg.layers must be a positive integer \(a ResNet: .*\), not \[\]$"),
    ({"vision_cfg": {"layers": None}}, r"vision_cfg.layers must be a positive integer \(a ResNet: .*\), not None$"),
    ({"vision_cfg": {"mlp_ratio": 0}}, r"vision_cfg.mlp_ratio must be a positive number, not 0$"),  # (MLPs of width 0)
    ({"text_cfg": {"mlp_ratio": None}}, r"text_cfg.mlp_ratio must be a positive number, not None$"),
    ({"vision_cfg": {"act_kwargs": []}}, r"vision_cfg.act_kwargs may set only approximate, .*, not \[\]$"),
    # (a null size too, where the tower reads it: "unsupported operand type(s) for //", "empty() takes 1
    # positional argument", ... in "open_clip cannot build this architecture", naming no key)
    ({"vision_cfg": {"width": None}}, r"vision_cfg.width must be a positive integer, not None$"),
    ({"vision_cfg": {"head_width": None}}, r"vision_cfg.head_width must be a positive integer, not None$"),
    ({"vision_cfg": {"patch_size": None}}, r"vision_cfg.patch_size must be a positive integer, not None$"),
    ({"text_cfg": {"context_length": None}}, r"text_cfg.context_length must be a positive integer, not None$"),
    ({"text_cfg": {"vocab_size": None}}, r"text_cfg.vocab_size must be a positive integer, not None$"),
    ({"text_cfg": {"width": None}}, r"text_cfg.width must be a positive integer, not None$"),
    ({"text_cfg": {"heads": None}}, r"text_cfg.heads must be a positive integer, not None$"),
    ({"text_cfg": {"layers": None}}, r"text_cfg.layers must be a positive integer, not None$"),
    ({"text_cfg": {"tokenizer_kwargs": None}}, r"text_cfg.tokenizer_kwargs must be a JSON object, not None$"),
    ({"text_cfg": {"tokenizer_kwargs": []}}, r"text_cfg.tokenizer_kwargs must be a JSON object, not \[\]$"),
    # a ResNet's last feature map empty: RuntimeError "Output size is too small" at the first image
    ({"vision_cfg": {"image_size": 16, "layers": [1, 1, 1, 1]}},
     r"vision_cfg.image_size 16: a ResNet tower needs at least 32 pixels a side"),
    # by the type open_clip's dataclass declares: a string is true to open_clip (another architecture,
    # silently, for these), a string number a TypeError's words naming no key
    ({"vision_cfg": {"no_ln_pre": "x"}}, r"vision_cfg.no_ln_pre must be true or false, not 'x'$"),
    ({"vision_cfg": {"final_ln_after_pool": "x"}}, r"vision_cfg.final_ln_after_pool must be true or false, not 'x'$"),
    ({"text_cfg": {"proj_bias": 1}}, r"text_cfg.proj_bias must be true or false, not 1$"),
    ({"vision_cfg": {"ls_init_value": "x"}}, r"vision_cfg.ls_init_value must be a finite number or null, not 'x'$"),
    ({"text_cfg": {"ls_init_value": "1e-5"}}, r"text_cfg.ls_init_value must be a finite number or null, not '1e-5'$"),
    ({"vision_cfg": {"pos_embed_type": 3}}, r"vision_cfg.pos_embed_type must be a string, not 3$"),
    ({"vision_cfg": {"attn_pooler_heads": 1.5}}, r"vision_cfg.attn_pooler_heads must be an integer, not 1.5$"),
    ({"text_cfg": {"pad_id": True}}, r"text_cfg.pad_id must be an integer, not True$"),
    ({"vision_cfg": {"timm_drop": float("nan")}}, r"vision_cfg.timm_drop must be a finite number, not nan$"),
    ({"vision_cfg": {"attentional_pool": 1}}, r"vision_cfg.attentional_pool must be true, false or the name of "
                                              r"CoCa's pooler \('parallel', 'cascade'\), not 1$"),
    # a LayerScale that starts each block at 0, negated or at inf (NaN features): built silently; past
    # float64 "open_clip cannot build this architecture (int too big to convert)"
    ({"vision_cfg": {"ls_init_value": 0}}, r"vision_cfg.ls_init_value must be a positive number or null "
                                           r"\(LayerScale's initial value, a float32\), not 0$"),
    ({"text_cfg": {"ls_init_value": -1e-5}}, r"text_cfg.ls_init_value must be a positive number .*, not -1e-05$"),
    ({"text_cfg": {"ls_init_value": 1e39}}, r"text_cfg.ls_init_value must be a positive number .*, not 1e\+39$"),
    ({"vision_cfg": {"ls_init_value": 10**400}}, r"vision_cfg.ls_init_value must be a positive number or null "),
    # a position embedding open_clip's ViT does not build: "open_clip cannot build this architecture
    # (ValueError)", or its sine-cosine one's asserts (a square grid, a width of sines and cosines)
    ({"vision_cfg": {"pos_embed_type": "x"}}, r"vision_cfg.pos_embed_type must be 'learnable' or 'sin_cos_2d', "
                                              r"not 'x'$"),
    ({"vision_cfg": {"pos_embed_type": None}}, r"vision_cfg.pos_embed_type must be 'learnable' or 'sin_cos_2d', "),
    ({"vision_cfg": {"pos_embed_type": "sin_cos_2d", "image_size": [32, 64]}},
     r"vision_cfg.pos_embed_type 'sin_cos_2d' needs a square grid of patches, not 4 x 8 \(image_size \[32, 64\] in "),
    ({"vision_cfg": {"pos_embed_type": "sin_cos_2d", "width": 66, "head_width": 2}},
     r"vision_cfg.pos_embed_type 'sin_cos_2d' needs a width divisible by 4 \(sines and cosines .*\), not 66$"),
    # other kinds of pooling or projection than open_clip builds: "open_clip cannot build this
    # architecture (AssertionError)", or (proj_type) a linear projection, silently
    ({"vision_cfg": {"pool_type": "x"}}, r"vision_cfg.pool_type must be 'tok', 'avg' or 'none', not 'x'$"),
    ({"text_cfg": {"pool_type": "mean"}}, r"text_cfg.pool_type must be 'first', 'last', 'argmax'.* or 'none', not 'mean'$"),
    ({"text_cfg": {"proj_type": "x"}}, r"text_cfg.proj_type must be 'linear' or 'none', not 'x'$"),
    ({"text_cfg": {"proj_type": None}}, r"text_cfg.proj_type must be 'linear' or 'none', not None$"),
    # an attentional pooler of no queries (an IndexError traceback at the first image), or heads that do
    # not divide embed_dim ("open_clip cannot build this architecture (embed_dim must be divisible ...)")
    ({"vision_cfg": {"attentional_pool": True, "attn_pooler_queries": 0}},
     r"vision_cfg.attn_pooler_queries must be a positive integer beside an attentional_pool, not 0$"),
    ({"vision_cfg": {"attentional_pool": True, "attn_pooler_heads": None}},
     r"vision_cfg.attn_pooler_heads must be a positive integer beside an attentional_pool, not None$"),
    ({"vision_cfg": {"attentional_pool": True, "attn_pooler_heads": 3}},
     r"embed_dim 32 is not a multiple of vision_cfg.attn_pooler_heads 3 \(the attentional pooler's heads split it\)$"),
    # heads that do not divide the width: one head of 64 for head_width 48, silently; a text tower
    # stopped in "open_clip cannot build this architecture (embed_dim must be divisible by num_heads)"
    ({"vision_cfg": {"head_width": 48}}, r"vision_cfg.width 64 is not a multiple of vision_cfg.head_width 48 "
                                         r"\(open_clip builds width // head_width heads, each width / heads wide\)$"),
    ({"vision_cfg": {"head_width": 128}}, r"vision_cfg.width 64 is not a multiple of vision_cfg.head_width 128 "),
    ({"text_cfg": {"heads": 3}}, r"text_cfg.width 32 is not a multiple of text_cfg.heads 3 \(each head takes an "
                                 r"equal part of it\)$"),
    ({"vision_cfg": {"image_size": 32, "layers": [1, 1, 1, 1], "head_width": 48}},
     r"vision_cfg.head_width 48 does not divide the 2048 features \(32 x width 64\) of a ResNet tower's attention "),
]


@pytest.mark.parametrize("change,error", BAD_CONFIGS)
def test_a_malformed_or_huge_config_is_one_line_before_anything_is_built(tmp_path, monkeypatch, change, error):
    from conftest import TINY_CLIP_CONFIG

    import clip_smot.clip.model as cm

    if isinstance(change, dict):
        cfg = {**TINY_CLIP_CONFIG, **{k: {**TINY_CLIP_CONFIG[k], **v} if isinstance(v, dict) else v
                                      for k, v in change.items()}}
    else:
        cfg = change
    path = tmp_path / "bad-clip.json"
    path.write_text(json.dumps(cfg))
    monkeypatch.setattr(cm, "physical_memory", lambda: 64 * 2**30)  # (the same answer on any machine)
    monkeypatch.setattr("open_clip.create_model", lambda *a, **k: pytest.fail("built before it was refused"))
    with pytest.raises(UserError, match=rf"^--model {path}: {error}"):
        load_clip(str(path), None)


def test_each_key_is_checked_by_the_type_the_installed_open_clip_declares():
    """The type of each key comes from open_clip's CLIPVisionCfg / CLIPTextCfg as installed, not a
    list kept here: every key declared bool, int, float or str (or Optional of one) refuses a value
    of another type, naming it (those checked on their own before say more: a size must be a
    positive integer, a string output_tokens is CoCa's; the keys a config file may not name
    anything with are check_config_file's). What the types allow passes: an integer where a
    number is declared, a null (open_clip's ResNet and timm configs give one for keys declared
    without Optional), a string or false for attentional_pool."""
    import copy
    import dataclasses
    import typing

    from conftest import TINY_CLIP_CONFIG
    from open_clip.model import CLIPTextCfg, CLIPVisionCfg

    import clip_smot.clip.config_checks as mc

    wrong = {bool: "x", int: "1", float: "1.0", str: 1}
    naming = ("timm_model_name", "timm_model_pretrained", "hf_model_name", "hf_tokenizer_name")  # (check_config_file's)
    checked = 0
    for tower, cls in (("vision_cfg", CLIPVisionCfg), ("text_cfg", CLIPTextCfg)):
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            kinds = [a for a in (typing.get_args(hints[f.name]) or (hints[f.name],)) if a is not type(None)]
            if len(kinds) != 1 or kinds[0] not in wrong or f.name in naming:
                continue
            cfg = copy.deepcopy(TINY_CLIP_CONFIG)
            cfg[tower][f.name] = wrong[kinds[0]]
            with pytest.raises(UserError, match=rf"^--model m.json: {tower}\.{f.name} "):  # (naming the key)
                mc.check_model_config(cfg, "--model m.json")
            checked += 1
    assert checked >= 30  # (open_clip 3.3 declares 53 such keys, 2.32 37)
    for tower, values in (("vision_cfg", {"no_ln_pre": None, "timm_proj": None, "attentional_pool": False,
                                          "ls_init_value": 1, "timm_drop": 0, "pos_embed_type": "learnable"}),
                          ("text_cfg", {"no_causal_mask": False, "ls_init_value": 0.1, "pad_id": 0,
                                        "proj_type": "linear"})):
        cfg = copy.deepcopy(TINY_CLIP_CONFIG)
        cfg[tower].update(values)
        mc.check_model_config(cfg, "--model m.json")


def test_the_kinds_of_block_and_pooling_of_open_clip_3_are_checked_where_it_declares_them(tmp_path):
    """open_clip 3 added ``block_type`` (anything but "custom" built the default blocks, silently)
    and pooling at ``eos_id``: with open_clip's own tokenizer, whose end token is 49407, any other id
    matched no token and pooled every text at its first, one feature for all. Each is refused naming
    the key; "custom" blocks and eos pooling at 49407 (a text's own feature) pass. Under open_clip
    2.32 the keys are not its: refused building, as before."""
    import copy
    import dataclasses

    from conftest import TINY_CLIP_CONFIG
    from open_clip.model import CLIPTextCfg

    import clip_smot.clip.config_checks as mc

    def changed(tower, **values):
        cfg = copy.deepcopy(TINY_CLIP_CONFIG)
        cfg[tower].update(values)
        return cfg

    if "eos_id" not in {f.name for f in dataclasses.fields(CLIPTextCfg)}:  # open_clip 2.x: neither key is its
        with pytest.raises(UserError, match=r"^--model m.json: text_cfg.pool_type must be 'first', 'last', 'argmax' "
                                            r"or 'none', not 'eos'$"):
            mc.check_model_config(changed("text_cfg", pool_type="eos"), "--model m.json")
        path = tmp_path / "clip-smot-tiny-block.json"
        path.write_text(json.dumps(changed("vision_cfg", block_type="custom")))
        with pytest.raises(UserError, match="block_type"):  # (open_clip's unexpected keyword, named)
            load_clip(str(path), None)
        return
    assert open_clip_tokenizer_end() == 49407

    for cfg, error in ((changed("vision_cfg", block_type="x"), r"vision_cfg.block_type must be null, 'default' or "
                                                                r"'custom', not 'x'$"),
                       (changed("text_cfg", block_type=""), r"text_cfg.block_type must be null, 'default' or 'custom'"),
                       (changed("text_cfg", pool_type="eos"), r"text_cfg.pool_type 'eos' pools at text_cfg.eos_id 2, "
                                                              r"a token open_clip's tokenizer does not end a text with "
                                                              r"\(its end token is 49407\)$")):
        with pytest.raises(UserError, match=rf"^--model m.json: {error}"):
            mc.check_model_config(cfg, "--model m.json")
    mc.check_model_config(changed("vision_cfg", block_type="custom"), "--model m.json")
    path = tmp_path / "clip-smot-tiny-eos.json"
    path.write_text(json.dumps(changed("text_cfg", pool_type="eos", eos_id=49407)))
    clip = load_clip(str(path), None)
    features = clip.model.encode_text(clip.tokenizer(["a photo of a dog", "red"]))
    assert not torch.allclose(features[0], features[1])


def open_clip_tokenizer_end() -> int:
    from open_clip.tokenizer import SimpleTokenizer

    return SimpleTokenizer().eot_token_id


def test_a_patch_as_large_as_the_image_is_accepted(tmp_path):
    """The checks' edge: a ViT of one patch (patch_size = image_size) is refused by none of them;
    open_clip builds it and encodes images with it."""
    from conftest import TINY_CLIP_CONFIG

    cfg = {**TINY_CLIP_CONFIG, "vision_cfg": {**TINY_CLIP_CONFIG["vision_cfg"], "patch_size": 32}}
    path = tmp_path / "clip-smot-tiny-one-patch.json"
    path.write_text(json.dumps(cfg))
    clip = load_clip(str(path), None)
    assert clip.model.visual.positional_embedding.shape == (1 + 1, 64)
    assert clip.model.encode_image(torch.zeros(2, 3, 32, 32)).shape == (2, 32)


def test_a_patch_dropout_in_its_range_is_accepted(tmp_path):
    """The check's edge: 0 and 0.5 are open_clip's PatchDropout's to build; it drops patches only
    in training mode, so a frozen tower encodes as without it."""
    from conftest import TINY_CLIP_CONFIG

    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    features = []
    for p in (0, 0.5):
        cfg = {**TINY_CLIP_CONFIG, "vision_cfg": {**TINY_CLIP_CONFIG["vision_cfg"], "patch_dropout": p}}
        path = tmp_path / f"clip-smot-tiny-dropout-{p}.json"
        path.write_text(json.dumps(cfg))
        torch.manual_seed(0)  # (the same random weights)
        features.append(load_clip(str(path), None).model.encode_image(images))
    assert torch.equal(features[0], features[1])


def test_every_config_open_clip_ships_passes_the_checks():
    """The checks refuse what open_clip's own architectures never hold: each of its configs
    (ViTs, ResNets, timm and Hugging Face towers) passes them."""
    import open_clip

    import clip_smot.clip.model as cm
    import clip_smot.clip.config_checks as mc

    # (open_clip's own files: not the configs other tests registered in this process)
    names = [name for name in open_clip.list_models() if cm._builtin_config_file(name).is_file()]
    assert len(names) > 100 and {"ViT-B-16", "RN50", "ViT-H-14-378", "ViT-bigG-14"} <= set(names)
    for name in names:
        mc.check_model_config(open_clip.get_model_config(name), name)
    patches = [(cfg["vision_cfg"]["image_size"] // cfg["vision_cfg"]["patch_size"]) ** 2
               for cfg in map(open_clip.get_model_config, names) if cfg["vision_cfg"].get("patch_size")]
    assert max(patches) == 729 < mc.MAX_PATCHES  # ViT-H-14-378 (the limit's comment says so)
    assert open_clip.tokenizer.SimpleTokenizer().vocab_size == mc.SIMPLE_TOKENIZER_VOCAB


def test_a_prompts_stored_config_is_named_by_the_prompt_not_a_temporary_file(tmp_path, monkeypatch):
    """load_clip_for_prompt registers the stored config through a temporary NAME.json: its errors
    named that file (--model /tmp/tmpXXXX/clip-smot-tiny.json: ...), which the user never saw."""
    from conftest import TINY_CLIP_CONFIG

    import clip_smot.clip.model as cm

    monkeypatch.setattr(cm, "physical_memory", lambda: 64 * 2**30)
    wide = {**TINY_CLIP_CONFIG, "vision_cfg": {**TINY_CLIP_CONFIG["vision_cfg"], "width": 2**16}}
    with pytest.raises(UserError, match=r"^--prompt p.safetensors: its weights would take at least \d+\.\d GiB"):
        cm.load_clip_for_prompt("wide-clip", wide, None, activation_source="--prompt p.safetensors")
    # (a timm architecture that timm does not have passes the checks, which leave it to open_clip)
    odd = {**TINY_CLIP_CONFIG, "vision_cfg": {"timm_model_name": "no_such_timm_model"}}
    with pytest.raises(UserError, match=r"^--prompt p.safetensors: open_clip cannot build this architecture"):
        cm.load_clip_for_prompt("odd-clip", odd, None, activation_source="--prompt p.safetensors")
    with pytest.raises(UserError, match=r"^--prompt p.safetensors: model_config.vision_cfg.width 64 is not a multiple "
                                        r"of model_config.vision_cfg.head_width 7 "):
        cm.load_clip_for_prompt("seven-clip", {**TINY_CLIP_CONFIG, "vision_cfg": {**TINY_CLIP_CONFIG["vision_cfg"],
                                                                                  "head_width": 7}}, None,
                                activation_source="--prompt p.safetensors")
    with pytest.raises(UserError, match=r"^--prompt p.safetensors: model_config.vision_cfg must be a JSON object"):
        cm.load_clip_for_prompt("str-clip", {**TINY_CLIP_CONFIG, "vision_cfg": "x"}, None,
                                activation_source="--prompt p.safetensors")


def test_a_prompt_naming_open_clips_model_with_another_config_builds_nothing(monkeypatch):
    """A prompt whose metadata 'model' is a name of open_clip's registry was built by that name,
    whatever its stored config: a prompt of the tiny config naming ViT-L-14 built ViT-L-14 (2.4 GB,
    28 s on 2 CPU cores; ViT-bigG-14: 10 GB) before saying it was "made for model ViT-L-14, which is
    not the model in use, ViT-L-14". The stored config must be the registry's (QuickGELU aside:
    the weights set it), or nothing is built."""
    import open_clip
    from conftest import TINY_CLIP_CONFIG

    import clip_smot.clip.model as cm

    monkeypatch.setattr(open_clip, "create_model", lambda *a, **k: pytest.fail("built"))
    with pytest.raises(UserError) as e:
        cm.load_clip_for_prompt("ViT-L-14", TINY_CLIP_CONFIG, None, activation_source="--prompt p.safetensors")
    assert str(e.value) == ("--prompt p.safetensors: made for a model named ViT-L-14 whose stored model_config is not "
                            "open_clip's ViT-L-14; pass --model (that config as a JSON file) and --pretrained")
    # ViT-B-16's own config, as a prompt of OpenAI's weights stores it (QuickGELU set): built by its name
    monkeypatch.setattr(cm, "load_clip", lambda name, *a: f"load_clip({name})")
    stored = {**open_clip.get_model_config("ViT-B-16"), "quick_gelu": True}
    assert cm.load_clip_for_prompt("ViT-B-16", stored, "openai", activation="quick_gelu") == "load_clip(ViT-B-16)"


def test_a_config_file_named_like_siglip_gets_the_clip_tokenizer(tmp_path, tiny_clip_config):
    """open_clip's get_tokenizer gives any name holding 'siglip' a SigLIP tokenizer from the
    Hugging Face hub: a config file my-siglip.json (its name: the stem) failed offline, or would
    tokenize with another vocabulary than its text tower's. Its tokenizer is CLIP's, as any
    config file without a Hugging Face tokenizer."""
    import open_clip

    path = tmp_path / "my-siglip.json"
    path.write_text(open(tiny_clip_config).read())
    clip = load_clip(str(path), None)
    texts = ["a photo of a sea lion.", "Ünïcode, and  spaces"]
    assert torch.equal(clip.tokenizer(texts), open_clip.tokenize(texts))


def test_images_are_normalised_with_openais_mean_and_std(tiny_clip_config, tiny_clip_checkpoint):
    """A model config without preprocessing of its own is fed as OpenAI's CLIP is (its
    ``clip._transform``): the fit step and the scorer's GPU decoding normalise with these."""
    from reference_clip import OPENAI_MEAN, OPENAI_STD

    clip = load_clip(tiny_clip_config, tiny_clip_checkpoint)
    assert clip.mean == pytest.approx(OPENAI_MEAN, abs=1e-7) and clip.std == pytest.approx(OPENAI_STD, abs=1e-7)


def test_the_tokenizer_pads_to_the_text_towers_context_length(tmp_path, tiny_clip_config):
    """A text tower of 40 positions gets tokens [N, 40] (OpenAI's tokenizer, zero-padded to 40):
    open_clip's encode_text adds a positional embedding of 40 rows to them."""
    from reference_clip import tokenize

    cfg = json.loads(Path(tiny_clip_config).read_text())
    cfg["text_cfg"]["context_length"] = 40
    path = tmp_path / "clip-smot-tiny-40.json"
    path.write_text(json.dumps(cfg))
    clip = load_clip(str(path), None)
    texts = ["a photo of a sea lion.", "goldfish", ""]
    tokens = clip.tokenizer(texts)
    assert torch.equal(tokens, tokenize(texts, context_length=40))
    assert clip.model.encode_text(tokens).shape == (3, 32)


def test_an_activation_asked_for_is_built_whatever_the_config_says(tiny_clip_config):
    """The tiny config says quick_gelu; a prompt made with GELU (e.g. with weights whose tag says
    so) asks for GELU: every MLP of both towers is then nn.GELU, as the recorded config says."""
    from open_clip.transformer import QuickGELU

    clip = load_clip(tiny_clip_config, None, activation="gelu")
    blocks = [*clip.model.transformer.resblocks, *clip.model.visual.transformer.resblocks]
    assert clip.activation == "gelu" and clip.config["quick_gelu"] is False
    assert all(type(b.mlp.gelu) is torch.nn.GELU for b in blocks)
    quick = load_clip(tiny_clip_config, None)
    assert all(type(b.mlp.gelu) is QuickGELU for b in [*quick.model.transformer.resblocks,
                                                        *quick.model.visual.transformer.resblocks])


def test_a_tag_whose_config_says_gelu_builds_gelu_with_the_tags_weights(tiny_clip_config, monkeypatch):
    """A pretrained tag that sets ``quick_gelu`` False implies GELU even where the model config says
    quick_gelu (open_clip 3.3's own tags all set it True: one that says False stands in here), and
    its weights are open_clip's to load (a tag is not one of OpenAI's files)."""
    import open_clip.pretrained

    import clip_smot.clip.model as cm

    real_cfg, real_create = open_clip.pretrained.get_pretrained_cfg, open_clip.create_model
    monkeypatch.setattr(open_clip.pretrained, "get_pretrained_cfg",
                        lambda name, tag: {"quick_gelu": False} if tag == "gelu-tag" else real_cfg(name, tag))
    monkeypatch.setattr(cm, "_tag_is_cached", lambda name, tag: True)
    asked = []  # (the weights are not there: random ones stand in)
    monkeypatch.setattr(open_clip, "create_model", lambda name, pretrained=None, **kw: asked.append((pretrained, kw))
                        or real_create(name, pretrained=None, **kw))
    clip = load_clip(tiny_clip_config, "gelu-tag")
    assert clip.activation == "gelu" and clip.pretrained == "gelu-tag"
    assert asked[-1] == ("gelu-tag", {"device": "cpu", "quick_gelu": False})
    assert all(type(b.mlp.gelu) is torch.nn.GELU for b in clip.model.transformer.resblocks)


def test_the_config_checks_accept_their_edges_and_refuse_zero_sizes():
    """Each limit is inclusive, as its message says: an image of 8 pixels (one patch of 8) or of
    2048 (in patches of 32: 64 x 64 = 4096 tokens, MAX_PATCHES), a ResNet fed 32 pixels (its
    stride), 1024 blocks (MAX_LAYERS) all pass. A size of 0, an eps of 0 and a config without a
    tower are refused in one line (0 heads was a ZeroDivisionError in open_clip, a config without
    text_cfg a KeyError)."""
    import copy

    from conftest import TINY_CLIP_CONFIG

    import clip_smot.clip.config_checks as mc

    def changed(**towers):
        cfg = copy.deepcopy(TINY_CLIP_CONFIG)
        for tower, values in towers.items():
            cfg[tower].update(values)
        return cfg

    for cfg in (changed(vision_cfg={"image_size": 8, "patch_size": 8}),
                changed(vision_cfg={"image_size": 2048, "patch_size": 32}),
                changed(vision_cfg={"image_size": 32, "layers": [1, 1, 1, 1]}),
                changed(vision_cfg={"layers": 1024}), changed(text_cfg={"layers": 1024}),
                changed(vision_cfg={"attentional_pool": ""}),  # (no pool: open_clip reads it as false)
                changed(vision_cfg={"head_width": 64}), changed(text_cfg={"heads": 32}),  # (one head; 32 of 1)
                changed(vision_cfg={"ls_init_value": 1e-5}), changed(text_cfg={"ls_init_value": 3.4e38}),
                # (a grid square once the pixels past the last patch are dropped, as open_clip does)
                changed(vision_cfg={"pos_embed_type": "sin_cos_2d", "image_size": [32, 39]}),
                changed(vision_cfg={"pool_type": "avg"}), changed(text_cfg={"pool_type": "last", "proj_type": "none"}),
                # (no pooler, no pooler sizes read)
                changed(vision_cfg={"attn_pooler_queries": 0, "attn_pooler_heads": 3}),
                changed(vision_cfg={"attentional_pool": True, "attn_pooler_queries": 1, "attn_pooler_heads": 32}),
                # (a null size a tower does not read: a ResNet's patch_size, as open_clip's ResNet configs give it)
                changed(vision_cfg={"image_size": 32, "layers": [1, 1, 1, 1], "patch_size": None}),
                # (a ResNet's head_width divides its pool's 32 x width features: RN50x4's 64 of 80 x 32)
                changed(vision_cfg={"image_size": 32, "layers": [1, 1, 1, 1], "width": 80, "head_width": 64}),
                {**changed(text_cfg={"embed_cls": True}), "custom_text": True}):  # (CustomTextCLIP adds it)
        mc.check_model_config(cfg, "--model m.json")
    for cfg, error in ((changed(vision_cfg={"head_width": 0}), r"vision_cfg.head_width must be a positive integer, not 0$"),
                       (changed(text_cfg={"heads": 0}), r"text_cfg.heads must be a positive integer, not 0$"),
                       ({**TINY_CLIP_CONFIG, "embed_dim": 0}, r"embed_dim must be a positive integer, not 0$"),
                       (changed(vision_cfg={"norm_kwargs": {"eps": 0}}),
                        r"vision_cfg.norm_kwargs may set only eps, a positive number, not \{'eps': 0\}$"),
                       ({k: v for k, v in TINY_CLIP_CONFIG.items() if k != "text_cfg"},
                        r"the model config: an open_clip model config needs embed_dim, vision_cfg and text_cfg$")):
        with pytest.raises(UserError, match=rf"^--model m.json: {error}"):
            mc.check_model_config(cfg, "--model m.json")
    # a prompt's stored config is named by its field (the prefix), not as "the model config"
    with pytest.raises(UserError, match=r"^prompt p: model_config must be a JSON object \(an open_clip model config\), "
                                        r"not list$"):
        mc.check_model_config([1], "prompt p", "model_config.")


def test_a_config_file_may_name_a_timm_architecture_but_nothing_to_fetch():
    """timm reads a name with a colon as a hub or folder source (``hf-hub:org/x``, or a bare
    ``hf-hub:x``), and one with a slash or a backslash as a path; a name that is no string at all
    was a TypeError. Each is refused naming the key at fault: ``timm_model_pretrained`` when it is
    the weights that would be fetched. A plain architecture name passes."""
    from clip_smot.clip.config_checks import check_config_file

    for timm, error in (({"timm_model_name": "hf-hub:evil"}, r"vision_cfg.timm_model_name 'hf-hub:evil': "),
                        ({"timm_model_name": "..\\evil"}, r"vision_cfg.timm_model_name '..\\\\evil': "),
                        ({"timm_model_name": "../evil"}, r"vision_cfg.timm_model_name '../evil': "),
                        ({"timm_model_name": 5}, r"vision_cfg.timm_model_name 5: "),
                        ({"timm_model_name": "vit_base_patch16_224", "timm_model_pretrained": True},
                         r"vision_cfg.timm_model_pretrained True: ")):
        cfg = {"embed_dim": 32, "vision_cfg": timm, "text_cfg": {}}
        with pytest.raises(UserError, match=rf"^--model m.json: {error}a config file may name a timm architecture"):
            check_config_file(cfg, "--model m.json")
    check_config_file({"embed_dim": 32, "vision_cfg": {"timm_model_name": "vit_base_patch16_224"}, "text_cfg": {}},
                      "--model m.json")


def test_a_wide_mlp_is_counted_in_the_estimate_before_anything_is_built(tmp_path, monkeypatch):
    """The estimate counts each ViT block's (4 + 2 mlp_ratio) width^2 weights: 12 blocks of width
    1024 with mlp_ratio 1000 hold 12 x 2004 x 1024^2 = 2.5e10 numbers, 94 GiB in fp32, refused
    on a machine of 64 GiB before open_clip builds anything (at mlp_ratio 4 they would be 0.6 GiB)."""
    from conftest import TINY_CLIP_CONFIG

    import clip_smot.clip.model as cm

    cfg = {**TINY_CLIP_CONFIG, "vision_cfg": {**TINY_CLIP_CONFIG["vision_cfg"], "layers": 12, "width": 1024,
                                              "head_width": 64, "mlp_ratio": 1000}}
    path = tmp_path / "wide-mlp.json"
    path.write_text(json.dumps(cfg))
    monkeypatch.setattr(cm, "physical_memory", lambda: 64 * 2**30)
    monkeypatch.setattr("open_clip.create_model", lambda *a, **k: pytest.fail("built before it was refused"))
    with pytest.raises(UserError, match=rf"^--model {path}: its weights would take at least 9[34]\.\d GiB in fp32"):
        load_clip(str(path), None)


def test_a_json_file_name_in_the_current_folder_is_a_config_file(tmp_path, monkeypatch, tiny_clip_config):
    """``--model tiny.json`` in the current folder is a config file (its suffix says so), not an
    open_clip name."""
    monkeypatch.chdir(tmp_path)
    Path("clip-smot-tiny-here.json").write_text(Path(tiny_clip_config).read_text())
    assert load_clip("clip-smot-tiny-here.json", None).name == "clip-smot-tiny-here"


def test_a_config_file_named_as_an_open_clip_model_must_hold_that_architecture(tmp_path, tiny_clip_config):
    """--model cfg/ViT-B-16.json holding another architecture was registered by its stem: it
    replaced open_clip's ViT-B-16 for the process, and the run's records named ViT-B-16 for a
    network that is not. It is refused (open_clip's own config stays registered); a copy of
    open_clip's file is that architecture and is taken."""
    import open_clip

    from clip_smot.clip.model import model_config

    builtin = json.loads((Path(open_clip.__file__).parent / "model_configs" / "ViT-B-16.json").read_text())
    (tmp_path / "ViT-B-16.json").write_text(Path(tiny_clip_config).read_text())
    with pytest.raises(UserError) as e:
        load_clip(str(tmp_path / "ViT-B-16.json"), None)
    assert str(e.value) == (f"--model {tmp_path / 'ViT-B-16.json'}: named as open_clip's ViT-B-16 but holds another "
                            "architecture; rename the file (its name is the model's name in the run's records)")
    assert open_clip.get_model_config("ViT-B-16") == builtin
    (tmp_path / "copy").mkdir()
    (tmp_path / "copy" / "ViT-B-16.json").write_text(json.dumps(builtin))
    assert model_config(str(tmp_path / "copy" / "ViT-B-16.json")) == builtin
    (tmp_path / "tiny-of-mine.json").write_text(Path(tiny_clip_config).read_text())  # (no open_clip name: as before)
    assert load_clip(str(tmp_path / "tiny-of-mine.json"), None).name == "tiny-of-mine"


def test_weights_that_contradict_a_prompts_activation_are_refused_naming_the_prompt(tiny_clip_config, monkeypatch):
    """A prompt made with QuickGELU, scored with a tag whose weights were trained with GELU: the
    error names the prompt that asked for QuickGELU (not --pretrained) and the weights, before
    anything is built."""
    import open_clip.pretrained

    import clip_smot.clip.model as cm

    real_cfg = open_clip.pretrained.get_pretrained_cfg
    monkeypatch.setattr(open_clip.pretrained, "get_pretrained_cfg",
                        lambda name, tag: {"quick_gelu": False} if tag == "gelu-tag" else real_cfg(name, tag))
    monkeypatch.setattr(cm, "_tag_is_cached", lambda name, tag: True)
    monkeypatch.setattr(open_clip, "create_model", lambda *a, **k: pytest.fail("built before it was refused"))
    with pytest.raises(UserError, match=r"^--prompt p.safetensors: made with QuickGELU, but the gelu-tag weights of "
                                        r"clip-smot-tiny were trained with GELU: .* fit it again with these weights$"):
        load_clip(tiny_clip_config, "gelu-tag", activation="quick_gelu", activation_source="--prompt p.safetensors")


def test_a_config_in_open_clips_pretrained_layout_builds_its_model_cfg(tmp_path):
    """open_clip's pretrained configs hold the model config under ``model_cfg`` beside a
    ``preprocess_cfg``: load_clip checked that model_cfg, then crashed with an AttributeError
    ('NoneType' object has no attribute 'get'), open_clip having registered nothing under the
    file's name. It builds the model_cfg's architecture (the tiny ViT: 4 x 4 patches of 8 pixels
    and a class token, of width 64). So does a config file whose name has no .json (open_clip
    registers .json files only), found by its folder."""
    from conftest import TINY_CLIP_CONFIG

    wrapped = tmp_path / "clip-smot-tiny-wrapped.json"
    wrapped.write_text(json.dumps({"model_cfg": TINY_CLIP_CONFIG, "preprocess_cfg": {}}))
    clip = load_clip(str(wrapped), None)
    assert clip.name == "clip-smot-tiny-wrapped" and clip.config == TINY_CLIP_CONFIG
    assert clip.model.visual.positional_embedding.shape == ((32 // 8) ** 2 + 1, 64)
    assert clip.model.encode_image(torch.zeros(1, 3, 32, 32)).shape == (1, 32)
    (tmp_path / "clip-smot-tiny-bare").write_text(json.dumps(TINY_CLIP_CONFIG))
    bare = load_clip(str(tmp_path / "clip-smot-tiny-bare"), None)
    assert bare.name == "clip-smot-tiny-bare" and bare.config == TINY_CLIP_CONFIG
    (tmp_path / "clip-smot-tiny-no-preprocess.json").write_text(json.dumps({"model_cfg": TINY_CLIP_CONFIG}))
    assert load_clip(str(tmp_path / "clip-smot-tiny-no-preprocess.json"), None).config == TINY_CLIP_CONFIG
    (tmp_path / "clip-smot-tiny-listed.json").write_text(json.dumps({"model_cfg": TINY_CLIP_CONFIG, "preprocess_cfg": [1]}))
    with pytest.raises(UserError, match=rf"^--model {tmp_path / 'clip-smot-tiny-listed.json'}: preprocess_cfg must be a "
                                        r"JSON object, not \[1\]$"):
        load_clip(str(tmp_path / "clip-smot-tiny-listed.json"), None)


@pytest.mark.parametrize("preprocess, refused", [
    # laion/CLIP-ViT-B-32-laion2B-s34B-b79K's: OpenAI's mean and std, as a local checkpoint gets them
    ({"mean": [0.48145466, 0.4578275, 0.40821073], "std": [0.26862954, 0.26130258, 0.27577711],
      "interpolation": "bicubic", "resize_mode": "shortest"}, None),
    # OpenAI's mean within 1e-6 (written to fewer digits) is OpenAI's; 2e-6 off is another
    ({"mean": [0.4814538, 0.4578283, 0.4082100]}, None),
    ({"mean": [0.48145466, 0.4578295, 0.40821073]}, r"preprocess_cfg.mean \[0.48145466, 0.4578295, 0.40821073\] is not"),
    # the size is the model's own (32 here, not the default 224); a null, or a key open_clip drops, is no request
    ({"size": 32, "interpolation": None, "not_a_setting": [1, 2]}, None),
    # laion/CLIP-ViT-L-14-laion2B-s32B-b82K's mean, and apple/DFN5B-CLIP-ViT-H-14's resize
    ({"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}, r"preprocess_cfg.mean \[0.5, 0.5, 0.5\] is not"),
    ({"resize_mode": "squash"}, r"preprocess_cfg.resize_mode 'squash' is not"),
    # two values for three channels, or one number: not OpenAI's three (the shorter list compared in full)
    ({"mean": [0.48145466, 0.4578275]}, r"preprocess_cfg.mean \[0.48145466, 0.4578275\] is not"),
    ({"std": 0.26862954}, r"preprocess_cfg.std 0.26862954 is not"),
    ({"mean": ["0.48145466", 0.4578275, 0.40821073]}, r"preprocess_cfg.mean \['0.48145466', 0.4578275, 0.40821073\] is not"),
])
def test_a_pretrained_configs_preprocessing_is_not_dropped_silently(tmp_path, preprocess, refused):
    """The preprocess_cfg beside a pretrained config's model_cfg was dropped: a local checkpoint
    gets open_clip's default preprocessing (OpenAI's mean and std, bicubic, shortest side), so the
    laion2b_s32b_b82k ViT-L-14, trained with a mean of 0.5, saw every image normalised otherwise,
    silently. A preprocess_cfg that asks for other values is refused in one line."""
    from conftest import TINY_CLIP_CONFIG

    path = tmp_path / "clip-smot-tiny-hub.json"
    path.write_text(json.dumps({"model_cfg": TINY_CLIP_CONFIG, "preprocess_cfg": preprocess}))
    if refused is None:
        clip = load_clip(str(path), None)
        assert clip.mean == (0.48145466, 0.4578275, 0.40821073) and clip.std == (0.26862954, 0.26130258, 0.27577711)
        return
    with pytest.raises(UserError, match=rf"^--model {path}: {refused} the preprocessing a local checkpoint gets "):
        load_clip(str(path), None)


# A tower pair for the size estimate, its counts worked out by hand (no default taken but the text's
# mlp_ratio): a 40 x 70 image in 16-pixel patches is 2 x 4 = 8 patch tokens (the pixels past the last
# patch dropped), each block (4 + 2 x 2.5) x 8^2 = 576 weights.
_VISION_8 = {"image_size": [40, 70], "patch_size": 16, "width": 8, "layers": 3, "mlp_ratio": 2.5}
_VISION_8_COUNT = 3 * 16**2 * 8 + (8 + 1) * 8 + 8 * 4 + 3 * 576  # patch conv, positions, projection, blocks: 7976
_TEXT_8 = {"width": 8, "context_length": 10, "vocab_size": 50000, "layers": 1, "mlp_ratio": 0.5}
# tokens, positions, projection; the causal mask; one block of (4 + 2 x 0.5) x 8^2 = 320
_TEXT_8_COUNT = (50000 + 10 + 4) * 8 + 10**2 + 320  # 400532


@pytest.mark.parametrize("cfg, count", [
    # the tiny ViT: patch conv 3 x 8^2 x 64, 16 + 1 positions of 64, projection 64 x 32, 2 blocks of
    # 12 x 64^2; text: (49408 tokens + 77 positions + 32) x 32, the mask 77^2, 2 blocks of 12 x 32^2
    ("tiny", 3 * 8**2 * 64 + 17 * 64 + 64 * 32 + 2 * 12 * 64**2 + (49408 + 77 + 32) * 32 + 77**2 + 2 * 12 * 32**2),
    # every size left to its default: ViT-B-16's (width 768, 12 layers, 224 in patches of 16: 196
    # tokens; text of width 512, 12 layers, 77 tokens of a vocabulary of 49408), embedded in 512
    ({"embed_dim": 512, "vision_cfg": {}, "text_cfg": {}},
     3 * 16**2 * 768 + 197 * 768 + 768 * 512 + 12 * 12 * 768**2 + (49408 + 77 + 512) * 512 + 77**2 + 12 * 12 * 512**2),
    ({"embed_dim": 4, "vision_cfg": _VISION_8, "text_cfg": _TEXT_8}, _VISION_8_COUNT + _TEXT_8_COUNT),
    # the default image, 224, in patches of 15: 14 x 14 tokens (225 would give 15 x 15); one block of 12 x 8^2
    ({"embed_dim": 4, "vision_cfg": {"width": 8, "layers": 1, "patch_size": 15}, "text_cfg": _TEXT_8},
     3 * 15**2 * 8 + (14 * 14 + 1) * 8 + 8 * 4 + 12 * 8**2 + _TEXT_8_COUNT),
    # a ResNet of stages of 1 and 2 bottlenecks, 2 and 4 planes: 14 x (1 x 2^2 + 2 x 4^2); its attention
    # pool of width 32 x 2 = 64: q, k, v, c (4 x 64^2) and the projection 64 x 4
    ({"embed_dim": 4, "vision_cfg": {"layers": [1, 2], "width": 2, "image_size": 64}, "text_cfg": _TEXT_8},
     14 * (1 * 2**2 + 2 * 4**2) + 4 * 64**2 + 64 * 4 + _TEXT_8_COUNT),
    # a timm image tower and a Hugging Face text tower count nothing (built and counted exactly after)
    ({"embed_dim": 4, "vision_cfg": {"timm_model_name": "vit_base_patch16_224"}, "text_cfg": _TEXT_8}, _TEXT_8_COUNT),
    ({"embed_dim": 4, "vision_cfg": _VISION_8, "text_cfg": {**_TEXT_8, "hf_model_name": "bert-base-uncased"}},
     _VISION_8_COUNT),
])
def test_the_size_estimate_counts_each_part_as_its_docstring_says(cfg, count):
    """estimated_size, worked out by hand from each config's numbers (the docstring's parts:
    (4 + 2 mlp_ratio) width^2 a transformer block, the embeddings, the projections, 14 planes^2 a
    bottleneck and the attention pool, the causal mask)."""
    from conftest import TINY_CLIP_CONFIG

    import clip_smot.clip.config_checks as mc

    assert mc.estimated_size(TINY_CLIP_CONFIG if cfg == "tiny" else cfg) == count


@pytest.mark.parametrize("name", ["ViT-B-16", "RN50"])
def test_the_size_estimate_is_within_10_percent_under_open_clips_count(name):
    """The docstring's promise, against open_clip's own count: the estimate of ViT-B-16 and RN50
    stays under the parameters (and causal mask) of the model open_clip builds, by less than 10%."""
    import warnings

    import open_clip

    import clip_smot.clip.config_checks as mc

    with warnings.catch_warnings(), torch.device("meta"):
        warnings.simplefilter("ignore")
        model = open_clip.create_model(name, pretrained=None, device="meta")
    exact = sum(p.numel() for p in model.parameters()) + model.attn_mask.numel()
    estimate = mc.estimated_size(open_clip.get_model_config(name))
    assert 0.9 * exact < estimate <= exact


def test_an_architecture_the_estimate_lets_through_is_refused_by_its_exact_count(tmp_path, monkeypatch):
    """Both limits are inclusive, each at half the memory. Past the estimate's fp32 bytes, the
    estimate refuses the model ("at least"); at them, the model built on the meta device is
    counted (its parameters, 4 bytes each, as open_clip builds it) and refused, the estimate
    staying under that count; at the exact bytes, or on a machine whose memory is unknown, it
    loads. The tiny model with a context of 16 tokens: its estimate, by hand, is its ViT's 113728
    (the test above) and a text tower of (49408 + 16 + 32) x 32, a mask of 16^2 and 2 blocks of
    12 x 32^2."""
    import warnings

    import open_clip
    from conftest import TINY_CLIP_CONFIG

    import clip_smot.clip.model as cm

    path = tmp_path / "clip-smot-tiny-counted.json"
    path.write_text(json.dumps({**TINY_CLIP_CONFIG, "text_cfg": {**TINY_CLIP_CONFIG["text_cfg"], "context_length": 16}}))
    open_clip.add_model_config(path)
    with warnings.catch_warnings(), torch.device("meta"):
        warnings.simplefilter("ignore")
        exact = 4 * sum(p.numel() for p in open_clip.create_model("clip-smot-tiny-counted", device="meta").parameters())
    estimated = 4 * (113728 + (49408 + 16 + 32) * 32 + 16**2 + 2 * 12 * 32**2)
    assert estimated < exact
    monkeypatch.setattr(cm, "physical_memory", lambda: 2 * estimated - 2)  # (the estimate past half: refused by it)
    with pytest.raises(UserError, match=rf"^--model {path}: its weights would take at least 0\.0 GiB in fp32, more "):
        load_clip(str(path), None)
    monkeypatch.setattr(cm, "physical_memory", lambda: 2 * estimated)  # (the estimate at half: not refused)
    with pytest.raises(UserError, match=rf"^--model {path}: its weights would take 0\.0 GiB in fp32, more than half "):
        load_clip(str(path), None)
    for memory in (2 * exact, None):  # (a machine whose memory is unknown: nothing to compare with)
        monkeypatch.setattr(cm, "physical_memory", lambda memory=memory: memory)
        assert load_clip(str(path), None).name == "clip-smot-tiny-counted"


def test_the_size_check_checks_the_config_it_sizes(monkeypatch):
    """_check_size reads the config open_clip holds under the name and checks it before sizing it:
    a width given as a string (which the estimate would square) is the check's one line, not a
    TypeError, whoever registered it."""
    import open_clip
    from conftest import TINY_CLIP_CONFIG

    import clip_smot.clip.model as cm

    bad = {**TINY_CLIP_CONFIG, "vision_cfg": {**TINY_CLIP_CONFIG["vision_cfg"], "width": "64"}}
    monkeypatch.setattr(open_clip, "get_model_config", lambda name: bad if name == "clip-smot-unchecked" else None)
    with pytest.raises(UserError, match=r"^prompt p: model_config\.vision_cfg\.width must be a positive integer, "
                                        r"not '64'$"):
        cm._check_size("clip-smot-unchecked", "prompt p", "model_config.")


def test_the_config_checks_take_open_clips_default_image_and_patch_sizes():
    """A ViT config may leave image_size and patch_size to open_clip (224 and 16): the checks
    compare the given one with that default (the message names it), one past it refused."""
    import copy

    from conftest import TINY_CLIP_CONFIG

    import clip_smot.clip.config_checks as mc

    def vision(**values):
        cfg = copy.deepcopy(TINY_CLIP_CONFIG)
        del cfg["vision_cfg"]["image_size"], cfg["vision_cfg"]["patch_size"]
        cfg["vision_cfg"].update(values)
        return cfg

    mc.check_model_config(vision(patch_size=224), "--model m.json")
    mc.check_model_config(vision(image_size=16), "--model m.json")
    for cfg, error in ((vision(patch_size=225), r"vision_cfg.patch_size 225 is larger than the image \(224\)$"),
                       (vision(image_size=15), r"vision_cfg.patch_size 16 is larger than the image \(15\)$")):
        with pytest.raises(UserError, match=rf"^--model m.json: {error}"):
            mc.check_model_config(cfg, "--model m.json")


def test_a_resnet_tower_needs_its_stride_on_each_side_of_the_image():
    """A ResNet's image given as [height, width] needs 32 pixels on its shorter side as well."""
    from conftest import TINY_CLIP_CONFIG

    import clip_smot.clip.config_checks as mc

    for size in ([31, 64], [64, 31]):
        cfg = {**TINY_CLIP_CONFIG, "vision_cfg": {**TINY_CLIP_CONFIG["vision_cfg"], "image_size": size, "layers": [1, 1]}}
        with pytest.raises(UserError, match=r"^--model m.json: vision_cfg.image_size \[\d+, \d+\]: a ResNet tower needs "
                                            r"at least 32 pixels a side"):
            mc.check_model_config(cfg, "--model m.json")
    mc.check_model_config({**TINY_CLIP_CONFIG, "vision_cfg": {"image_size": [32, 64], "layers": [1, 1]}}, "--model m.json")


def test_a_value_shown_in_an_error_is_cut_past_40_characters():
    """_shown: a repr of 40 characters whole; of 41, its first 37 and "..." (40 in all)."""
    import clip_smot.clip.config_checks as mc

    assert mc._shown("x" * 38) == repr("x" * 38) and len(repr("x" * 38)) == 40
    assert mc._shown("x" * 39) == "'" + "x" * 36 + "..."


def test_a_vit_patch_must_fit_the_shorter_side_of_the_image():
    """A ViT's image given as [height, width]: a patch larger than either side is refused."""
    from conftest import TINY_CLIP_CONFIG

    import clip_smot.clip.config_checks as mc

    for size in ([8, 64], [64, 8]):
        cfg = {**TINY_CLIP_CONFIG, "vision_cfg": {**TINY_CLIP_CONFIG["vision_cfg"], "image_size": size, "patch_size": 16}}
        with pytest.raises(UserError, match=rf"^--model m.json: vision_cfg.patch_size 16 is larger than the image "
                                            rf"\(\[{size[0]}, {size[1]}\]\)$"):
            mc.check_model_config(cfg, "--model m.json")


def test_an_image_size_of_one_side_is_one_line(tmp_path):
    """image_size as a list of one side passes the range check; open_clip cannot build it (it
    unpacks two sides), which is one line, not an IndexError of the size estimate before."""
    from conftest import TINY_CLIP_CONFIG

    path = tmp_path / "one-side.json"
    path.write_text(json.dumps({**TINY_CLIP_CONFIG, "vision_cfg": {**TINY_CLIP_CONFIG["vision_cfg"], "image_size": [32]}}))
    with pytest.raises(UserError, match=rf"^--model {path}: open_clip cannot build this architecture \("):
        load_clip(str(path), None)


@pytest.mark.parametrize("hub, cached", [
    ("clip-smot/tiny-hub/", "open_clip_model.safetensors"),  # a repo: open_clip's default file's safetensors first
    ("clip-smot/tiny-hub/", "open_clip_pytorch_model.bin"),
    ("clip-smot/tiny-hub/pytorch_model.bin", "pytorch_model.safetensors"),  # a named .bin (ViTamin's tags)
    ("clip-smot/tiny-hub/pytorch_model.bin", "pytorch_model.bin"),
])
def test_a_tag_in_the_hugging_face_cache_loads_offline(tmp_path, tiny_clip_config, tiny_clip_checkpoint, monkeypatch,
                                                       hub, cached):
    """Weights that open_clip downloaded once (into the Hugging Face cache) load without internet:
    the tag's file is found where huggingface_hub's own hf_hub_download finds it, and open_clip
    loads it, neither monkeypatched. A tag naming its file `pytorch_model.bin` (open_clip 3.3's
    ViTamin tags) was looked up as that file alone, while open_clip downloads its safetensors
    alternative first: cached as such, it was refused as "not cached and there is no internet"."""
    import huggingface_hub.constants
    import open_clip.pretrained
    from safetensors.torch import load_file, save_file

    state = {k: v + 0.25 if v.is_floating_point() else v for k, v in load_file(tiny_clip_checkpoint).items()}
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--clip-smot--tiny-hub"  # (huggingface_hub's cache layout)
    (repo / "snapshots" / commit).mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    if cached.endswith(".safetensors"):  # (weights of their own: not those of the tiny model's other tests)
        save_file(state, repo / "snapshots" / commit / cached)
    else:
        torch.save(state, repo / "snapshots" / commit / cached)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setitem(open_clip.pretrained._PRETRAINED, "clip-smot-tiny", {"cached_tag": {"hf_hub": hub}})
    clip = load_clip(tiny_clip_config, "cached-tag")
    assert clip.pretrained == "cached-tag"
    loaded = clip.model.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in state.items() if k in loaded) and "text_projection" in state
    (repo / "snapshots" / commit / cached).unlink()  # (and gone from the cache: one line, at once)
    with pytest.raises(UserError, match=r"^--pretrained cached-tag: the weights of clip-smot-tiny \(cached-tag\) are "
                                        "not cached and HF_HUB_OFFLINE is set, which stops every download"):
        load_clip(tiny_clip_config, "cached-tag")


def test_offline_an_openai_tag_names_the_file_openais_clip_package_keeps(tmp_path, monkeypatch):
    """Users of OpenAI's clip package (clip.load: MCM's and CoOp's code) have ViT-B-16's weights in
    its download folder, where open_clip 3 (which downloads from the Hugging Face hub) does not
    look. Offline, --pretrained openai names that file when it is there. Its folder and file name
    are read from OpenAI's own clip.py (the test extra's clip-anytorch), not from this project."""
    import importlib.util
    import re

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(UserError) as e:
        load_clip("ViT-B-16", "openai")
    assert "clip package" not in str(e.value)
    text = (Path(importlib.util.find_spec("clip").submodule_search_locations[0]) / "clip.py").read_text()
    url = re.search(r'"ViT-B/16": "([^"]+)"', text).group(1)
    root = re.search(r'download_root or os\.path\.expanduser\("([^"]+)"\)', text).group(1)
    kept = Path(os.path.expanduser(root)) / url.rsplit("/", 1)[1]
    kept.parent.mkdir(parents=True)
    kept.write_bytes(b"stands in for OpenAI's file")
    with pytest.raises(UserError) as e:
        load_clip("ViT-B-16", "openai")
    assert str(e.value).endswith(f"(or OpenAI's own ViT-B-16.pt with --model ViT-B-16); OpenAI's clip package keeps "
                                 f"them in {kept}: --model ViT-B-16 --pretrained {kept}")
    with pytest.raises(UserError) as e:  # (another tag's weights are not OpenAI's)
        load_clip("ViT-B-16", "laion2b_s34b_b88k")
    assert "clip package" not in str(e.value)


@pytest.mark.skipif(not os.path.isfile("/proc/self/mem"), reason="needs Linux's /proc/self/mem")
def test_weights_no_read_goes_through_are_one_line_naming_the_flag(tiny_clip_config):
    """--pretrained /proc/self/mem: a regular file to stat, while every read of it at offset 0 is an
    I/O error; hashing it ended fit, score, export and eval in OSError's traceback."""
    with pytest.raises(UserError, match=r"^--pretrained /proc/self/mem: cannot be read \(OSError: \[Errno 5\] "):
        load_clip(tiny_clip_config, "/proc/self/mem")
