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


def test_offline_a_tag_is_cached_only_where_its_local_file_is(tiny_clip_config, tiny_clip_checkpoint, monkeypatch,
                                                              tmp_path):
    """A pretrained config holding only a download URL (open_clip's older layout: no "file", no
    "hf_hub") has nothing in the local cache to find; one naming a local "file" (open_clip returns
    that path as the download) is cached where that file is. Offline, each without its weights
    fails fast with the message that says they are not cached, not as whatever open_clip's
    download attempt raises; the local file, there, loads."""
    import open_clip.factory
    import open_clip.pretrained

    real, cfgs = open_clip.pretrained.get_pretrained_cfg, {}
    for module in (open_clip.pretrained, open_clip.factory):  # (ours looks it up there, open_clip's loader here)
        monkeypatch.setattr(module, "get_pretrained_cfg", lambda model, tag: cfgs[tag] if tag in cfgs else real(model, tag))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HOME", str(tmp_path))
    for tag, cfg in (("url-only", {"url": "https://example.invalid/weights.pt"}),
                     ("local-file", {"file": str(tmp_path / "gone.safetensors")})):
        cfgs[tag] = cfg
        with pytest.raises(UserError) as e:
            load_clip(tiny_clip_config, tag)
        assert str(e.value).startswith(f"--pretrained {tag}: the weights of clip-smot-tiny ({tag}) are not cached")
    cfgs["local-file"] = {"file": tiny_clip_checkpoint}
    clip = load_clip(tiny_clip_config, "local-file")
    reference = load_clip(tiny_clip_config, tiny_clip_checkpoint)
    assert all(torch.equal(a, b) for a, b in zip(clip.model.state_dict().values(), reference.model.state_dict().values()))


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


@pytest.mark.parametrize("model, tag, known", [
    ("ViT-B-16", "openai", True), ("ViT-B-16", "laion2b_s34b_b88k", True),
    ("ViT-B-16", "not-a-tag", False), ("ViT-B-16", "tiny.safetensors", False), ("RN50", "laion2b_s34b_b88k", False),
])
def test_a_prompts_pretrained_name_is_a_tag_only_where_open_clip_lists_it(model, tag, known):
    """A prompt's stored 'pretrained' without a SHA-256 is loaded as a tag only where it is one of
    the model's tags (else a file of that name in the current folder would load unchecked)."""
    from open_clip import list_pretrained_tags_by_model

    from clip_smot.clip.model import is_pretrained_tag

    assert (tag in list_pretrained_tags_by_model(model)) is known  # (the outside reference)
    assert is_pretrained_tag(model, tag) is known


# a zip's end record alone, pointing at a central directory of one entry that is not there: zipfile.is_zipfile
# says zip (it looks at the end record only), zipfile.ZipFile refuses it ("Bad offset for central directory")
_ZIP_END_ALONE = b"junk" + b"PK\x05\x06" + (0).to_bytes(4, "little") + (1).to_bytes(2, "little") * 2 + \
    (46).to_bytes(4, "little") + (0).to_bytes(4, "little") + (0).to_bytes(2, "little")


@pytest.mark.parametrize("suffix, data", [(".safetensors", b"not a checkpoint at all"),
                                          (".pt", b"not a checkpoint at all"), (".pt", _ZIP_END_ALONE)])
def test_damaged_checkpoint_file_is_one_line(tiny_clip_config, tmp_path, suffix, data):
    bad = tmp_path / f"weights{suffix}"
    bad.write_bytes(data)
    assert zipfile.is_zipfile(bad) == (data == _ZIP_END_ALONE)
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


@pytest.mark.parametrize("suffix", [".safetensors", ".pt", "_from_gpu.pt"])
def test_an_integer_weight_where_the_model_keeps_floats_is_refused(tiny_clip_config, tiny_clip_checkpoint, tmp_path,
                                                                   suffix):
    """A --pretrained file whose float32 bias the header called U32 (a seeded fuzz of the weights)
    was read as integers near 1e9, cast to floats and scored, exit 0 (ID accuracy 33% for 67%); a
    weight saved as integers (an int8 file without its scales) the same. It is one line, before
    open_clip loads anything; an integer buffer of the model's own (BatchNorm's step count) is not
    refused. A .pt saved on a GPU machine (its tensors' location "cuda:0") is read on the CPU for the
    check, not let through as unreadable."""
    import json
    import struct

    from safetensors.torch import load_file

    from helpers import save_as_if_from_cuda

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
        (torch.save if suffix == ".pt" else save_as_if_from_cuda)({**state, key: state[key].to(torch.int8)}, path)
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


def test_an_architecture_the_estimate_lets_through_is_refused_by_its_exact_count(tmp_path, monkeypatch):
    """Both limits are inclusive, each at half the memory. Past the estimate's fp32 bytes, the
    estimate refuses the model ("at least"); at them, the model built on the meta device is
    counted (its parameters, 4 bytes each, as open_clip builds it) and refused, the estimate
    staying under that count; at the exact bytes, or on a machine whose memory is unknown, it
    loads. The tiny model with a context of 16 tokens: its estimate, by hand, is its ViT's 113728
    (test_config_checks.py's hand count) and a text tower of (49408 + 16 + 32) x 32, a mask of
    16^2 and 2 blocks of 12 x 32^2."""
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


def test_a_full_temporary_folder_while_registering_a_config_is_one_line(tmp_path, tiny_clip_config, monkeypatch):
    """A config is registered with open_clip through a copy in a temporary folder: with $TMPDIR
    full (ENOSPC, or EFBIG under ``ulimit -f``) score, eval, fit and export all ended in
    pathlib's OSError traceback. Now one line names the flag and the temporary folder."""
    import errno

    from conftest import TINY_CLIP_CONFIG

    import clip_smot.clip.model as cm

    def full(self, *a, **k):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(cm.tempfile, "tempdir", str(tmp_path))
    monkeypatch.setattr(Path, "write_text", full)
    with pytest.raises(UserError) as e:
        cm.load_clip_for_prompt("full-clip", TINY_CLIP_CONFIG, None, activation_source="--prompt p.safetensors")
    assert str(e.value) == (f"--prompt p.safetensors: cannot write a temporary copy of its model config in {tmp_path}: "
                            f"{os.strerror(errno.ENOSPC)}; free space there or set TMPDIR to another folder")
    with pytest.raises(UserError) as e:
        cm.model_config(tiny_clip_config)
    assert str(e.value).startswith(f"--model {tiny_clip_config}: cannot write a temporary copy of its model config in ")
    assert list(tmp_path.iterdir()) == []  # (the temporary folder removed)


def test_a_temporary_config_copy_that_cannot_be_removed_is_no_failed_write(tmp_path, tiny_clip_config, monkeypatch):
    """The copy was written and registered; removing it again failed (unlink(2) or rmdir(2) of the
    temporary folder failing EROFS or EIO: injected in a real eval --prompt). eval stopped at
    once: "cannot write a temporary copy of its model config in $TMPDIR: Read-only file system;
    free space there ...", a write that had succeeded. A copy left in $TMPDIR stops nothing:
    the config is read as written."""
    import errno

    from conftest import TINY_CLIP_CONFIG

    import clip_smot.clip.model as cm

    real_unlink = os.unlink
    monkeypatch.setattr(cm.tempfile, "tempdir", str(tmp_path))
    for code in (errno.EROFS, errno.EIO):
        def fails(path, *args, code=code, **kwargs):
            if os.fspath(path).endswith(".json"):  # (rmtree unlinks by name, beside the folder's descriptor)
                raise OSError(code, os.strerror(code), os.fspath(path))
            return real_unlink(path, *args, **kwargs)

        monkeypatch.setattr(os, "unlink", fails)
        assert cm.model_config(tiny_clip_config) == TINY_CLIP_CONFIG, code


def test_weights_replaced_while_they_load_are_never_named_by_the_old_files_hash(tiny_clip_config, tiny_clip_checkpoint,
                                                                                tmp_path, monkeypatch):
    """load_clip hashed a --pretrained file, then open_clip read it again to build the model: a
    file written in between (a copy or download of other weights to that name, on a shared
    cluster) gave a model of the new weights under the old file's SHA-256, which keys the feature
    cache: the new weights' features were cached as the old ones' and read back by every later
    run with the old weights. A file replaced while it loads is refused."""
    import shutil

    from safetensors.torch import load_file, save_file

    from clip_smot.clip import model as cm
    from clip_smot.common.files import sha256_file

    weights = tmp_path / "w.safetensors"
    shutil.copy(tiny_clip_checkpoint, weights)
    other = {k: v + 0.5 if k == "text_projection" else v for k, v in load_file(tiny_clip_checkpoint).items()}
    save_file(other, str(tmp_path / "other.safetensors"))
    real = cm._create

    def written_meanwhile(*args, **kwargs):  # (another process writes the weights just before they load)
        os.replace(tmp_path / "other.safetensors", weights)
        return real(*args, **kwargs)

    monkeypatch.setattr(cm, "_create", written_meanwhile)
    try:
        clip = load_clip(tiny_clip_config, str(weights))
    except UserError as e:
        assert str(e).startswith(f"--pretrained {weights}: was replaced while it was read"), e
    else:
        assert clip.checkpoint_sha256 == sha256_file(weights)  # (the hash of the weights loaded)


@pytest.mark.parametrize("header", [b'{"a":', b"[]", b'{"w": 1}'])
def test_a_safetensors_checkpoint_with_a_damaged_header_is_one_line(tiny_clip_config, tmp_path, header):
    """A header of a length the file holds that is cut JSON, a list or an entry that is no tensor:
    the look for complex or sparse tensors gives up on it, and loading names what is wrong."""
    bad = tmp_path / "weights.safetensors"
    bad.write_bytes(len(header).to_bytes(8, "little") + header)
    with pytest.raises(UserError, match=rf"^--model clip-smot-tiny --pretrained {bad}: could not load the weights "
                                        r"\(Error while deserializing header: ") as info:
        load_clip(tiny_clip_config, str(bad))
    assert "\n" not in str(info.value)
