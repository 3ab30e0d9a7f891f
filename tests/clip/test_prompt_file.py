import dataclasses
import hashlib
import json
import re

import pytest
import torch
from helpers import guarded_safe_open, safetensors_reads, save_safetensors_by_hand, write_sparse_safetensors
from safetensors.torch import safe_open, save_file

import clip_smot
from clip_smot.clip.prompt_file import load_prompt, save_prompt, unfinished_note
from clip_smot.common.errors import UserError

_V = re.escape(clip_smot.__version__)  # (this clip-smot's version, as a refused file's line names it)

IDENT = {
    "model": "clip-smot-tiny",
    "model_config": json.dumps({"embed_dim": 32, "vision_cfg": {}, "text_cfg": {}}),
    "pretrained": "tiny.safetensors",
    "checkpoint_sha256": "ab" * 32,
}


def _save(path, **kw):
    args = dict(
        ctx=torch.randn(4, 16), text_features=torch.nn.functional.normalize(torch.randn(3, 32), dim=-1),
        identity=IDENT, n_ctx=4, class_position="end", csc=False, classnames=["a", "b c", "d"],
        config={"lr": 0.002},
    )
    args.update(kw)
    save_prompt(path, **args)
    return args


def test_round_trip(tmp_path):
    args = _save(tmp_path / "p.safetensors")
    p = load_prompt(tmp_path / "p.safetensors")
    torch.testing.assert_close(p.ctx, args["ctx"])
    torch.testing.assert_close(p.text_features, args["text_features"])
    assert p.classnames == ["a", "b c", "d"] and p.n_ctx == 4 and p.csc is False
    assert p.class_position == "end" and p.config == {"lr": 0.002} and p.model == "clip-smot-tiny"
    with pytest.raises(dataclasses.FrozenInstanceError):  # (a loaded prompt is read, never changed)
        p.n_ctx = 5
    assert p.check_model(IDENT) is True
    other_weights = dict(IDENT, checkpoint_sha256="cd" * 32)
    assert p.check_model(other_weights) is False
    other_arch = dict(IDENT, model="ViT-B-16", model_config=json.dumps({"embed_dim": 512}))
    with pytest.raises(UserError, match="made for model clip-smot-tiny"):
        p.check_model(other_arch)


def test_a_context_that_is_a_transposed_view_is_saved(tmp_path):
    """safetensors writes contiguous tensors only: a ctx [4, 16] that is the transpose of a [16, 4]
    tensor (a view, not contiguous) is written and reads back equal."""
    ctx = torch.arange(64, dtype=torch.float32).reshape(16, 4).t()
    assert not ctx.is_contiguous()
    features = torch.nn.functional.normalize(torch.arange(96, dtype=torch.float32).reshape(32, 3), dim=0).t()
    _save(tmp_path / "p.safetensors", ctx=ctx, text_features=features)
    p = load_prompt(tmp_path / "p.safetensors")
    assert torch.equal(p.ctx, ctx) and torch.equal(p.text_features, features)


def test_the_same_prompt_is_the_same_bytes_whatever_the_order_of_its_config(tmp_path):
    """The training configuration is written with sorted keys: two exports of one context whose
    config dicts were built in another order are the same file."""
    args = _save(tmp_path / "a.safetensors", config={"lr": 0.002, "epochs": 5, "run": {"seed": 1, "epoch": 5}})
    _save(tmp_path / "b.safetensors", ctx=args["ctx"], text_features=args["text_features"],
          config={"run": {"epoch": 5, "seed": 1}, "epochs": 5, "lr": 0.002})
    assert (tmp_path / "a.safetensors").read_bytes() == (tmp_path / "b.safetensors").read_bytes()


def test_stored_text_features_are_used_only_with_the_very_weights_they_were_made_with(tmp_path):
    """check_model is True only for the same tag (both without a checkpoint) or the same checkpoint
    file (SHA-256): not for another tag of the architecture, nor for a tag named as the prompt's
    checkpoint file (the reverse of a file named as the prompt's tag)."""
    tag = dict(IDENT, pretrained="openai", checkpoint_sha256="")
    _save(tmp_path / "tag.safetensors", identity=tag)
    assert load_prompt(tmp_path / "tag.safetensors").check_model(dict(tag, pretrained="laion2b_s34b_b88k")) is False
    from_file = dict(IDENT, pretrained="openai", checkpoint_sha256="ab" * 32)  # (a checkpoint file named openai)
    _save(tmp_path / "file.safetensors", identity=from_file)
    prompt = load_prompt(tmp_path / "file.safetensors")
    assert prompt.check_model(from_file) is True and prompt.check_model(tag) is False


def test_random_weights_are_never_taken_for_the_prompts_own(tmp_path):
    """A prompt fitted on random weights (--pretrained none) is encoded again from its context: its
    stored text features are used only for the tag or the checkpoint file (SHA-256) it names."""
    random = dict(IDENT, pretrained="", checkpoint_sha256="")
    _save(tmp_path / "p.safetensors", identity=random)
    assert load_prompt(tmp_path / "p.safetensors").check_model(random) is False


def test_a_file_named_as_the_prompts_tag_is_not_the_tags_weights(tmp_path):
    """A prompt of the tag openai, scored with a file named openai (its identity: the base name and
    its SHA-256), took the file for the tag's weights and used its stored text features."""
    tag = dict(IDENT, pretrained="openai", checkpoint_sha256="")
    _save(tmp_path / "p.safetensors", identity=tag)
    prompt = load_prompt(tmp_path / "p.safetensors")
    assert prompt.check_model(tag) is True
    assert prompt.check_model(dict(IDENT, pretrained="openai", checkpoint_sha256="ab" * 32)) is False


def test_not_safetensors_and_missing_keys(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"this is not a safetensors file at all")
    with pytest.raises(UserError, match="not a safetensors file"):
        load_prompt(bad)
    save_file({"ctx": torch.zeros(2, 2)}, str(tmp_path / "nokey.safetensors"), metadata={"x": "1"})
    with pytest.raises(UserError, match="missing tensor text_features"):
        load_prompt(tmp_path / "nokey.safetensors")
    save_file({"ctx": torch.zeros(2, 2), "text_features": torch.zeros(1, 2)}, str(tmp_path / "nometa.safetensors"))
    with pytest.raises(UserError, match="missing metadata"):
        load_prompt(tmp_path / "nometa.safetensors")
    with pytest.raises(UserError, match="no such file"):
        load_prompt(tmp_path / "absent.safetensors")


DEEP = "[" * 100_000 + "]" * 100_000  # (JSON nested past Python's recursion limit: a RecursionError in json)


@pytest.mark.parametrize("key,value", [("classnames", "[not json"), ("model_config", "{"), ("n_ctx", "four"),
                                       ("config", "{oops}"), ("classnames", '"a string"'), ("classnames", DEEP),
                                       ("model_config", DEEP), ("config", DEEP)])
def test_malformed_metadata_is_one_line_user_error(tmp_path, key, value):
    _save(tmp_path / "p.safetensors")
    with safe_open(str(tmp_path / "p.safetensors"), framework="pt") as f:
        meta = dict(f.metadata())
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    meta[key] = value
    save_file(tensors, str(tmp_path / "bad.safetensors"), metadata=meta)
    with pytest.raises(UserError, match="bad.safetensors: malformed metadata"):
        load_prompt(tmp_path / "bad.safetensors")


BAD_CONTENTS = [  # (tensor or metadata key, new value, the error it must give)
    ("format", None, r"not a clip-smot prompt \(missing metadata format\)"),
    ("format", "something-else", "not a clip-smot prompt"),
    ("format_version", "2", rf"prompt format version 2 is a newer clip-smot's \({_V}\); this clip-smot {_V} "
                            r"reads version 1: upgrade clip-smot to read it$"),
    ("format_version", "0", rf"prompt format version '0' is not one clip-smot writes \(this clip-smot {_V} reads 1\)$"),
    ("format_version", "1.5", r"prompt format version '1\.5' is not one clip-smot writes"),
    ("classnames", "[1, 2, 3]", r"malformed metadata \(classnames must be a non-empty JSON list of strings"),
    ("classnames", "[]", r"malformed metadata \(classnames must be a non-empty JSON list of strings"),
    ("class_position", "sideways", "malformed metadata"),
    ("csc", "maybe", "malformed metadata"),
    # the activation recorded must be the one its model_config builds (check_model compares the config's)
    ("activation", "quick_gelu", (r"malformed metadata \(activation 'quick_gelu' is not the one of its "
                                  r"model_config, 'gelu'\)$")),
    ("text_features", torch.ones(3, 32, dtype=torch.int32), "text_features must hold finite floating-point"),
    ("text_features", torch.full((3, 32), float("nan")), "text_features must hold finite floating-point"),
    ("text_features", torch.zeros(3, 16), r"text_features \(3, 16\) do not match 3 class names x the model's embed_dim 32"),
    ("text_features", torch.full((3, 32, 1), 32**-0.5),
     r"text_features \(3, 32, 1\) do not match 3 class names x the model's embed_dim 32$"),
    ("ctx", torch.zeros(4), r"ctx \(4,\) does not match \[4, d\]"),
    ("ctx", torch.zeros(2, 4, 16), r"ctx \(2, 4, 16\) does not match \[4, d\]"),
    ("ctx", torch.full((4, 16), float("inf")), "ctx must hold finite floating-point"),
    ("n_ctx", "9", r"ctx \(4, 16\) does not match \[9, d\]"),
    ("csc", "true", r"ctx \(4, 16\) does not match \[3, 4, d\]"),
    # float8 has no isfinite: 'NotImplementedError: "isfinite" not implemented' was a traceback
    ("ctx", torch.zeros(4, 16).to(torch.float8_e4m3fn), r"ctx must hold finite floating-point numbers within "
     r"float32's range \(float16, bfloat16, float32 or float64; this is torch.float8_e4m3fn\)$"),
    ("text_features", torch.full((3, 32), 32**-0.5).to(torch.float8_e5m2), "text_features must hold finite"),
    # found by fuzzing: finite as float64, inf as the float32 it is encoded in; scored with other weights
    # (the context encoded again), the line blamed them: "--pretrained ...: the text features re-encoded from
    # the stored context are not finite; the text encoder's weights hold NaN or inf, or overflow"
    ("ctx", torch.randn(4, 16, dtype=torch.float64).index_fill(0, torch.tensor([0]), 1e300),
     r"ctx must hold finite floating-point numbers within float32's range \(.*; this is torch.float64\)$"),
    # rows not of norm 1 were scored: all zero, every image got the same prediction
    ("text_features", torch.zeros(3, 32), r"text_features must be normalised \(each row of L2 norm 1\); row 0 \('a'\) "
     r"has norm 0$"),
    ("text_features", torch.cat([torch.full((2, 32), 32**-0.5), torch.full((1, 32), 0.2)]),
     r"text_features must be normalised .*; row 2 \('d'\) has norm 1.131$"),
    # the row named is the one furthest from norm 1, short of it too (|0 - 1| against |1 - 1|)
    ("text_features", torch.cat([torch.full((2, 32), 32**-0.5), torch.zeros(1, 32)]),
     r"text_features must be normalised .*; row 2 \('d'\) has norm 0$"),
    # the tolerance is 1e-2 (bf16 rounding), no more: rows of norm 1.02 are refused
    ("text_features", torch.full((3, 32), 1.02 * 32**-0.5),
     r"text_features must be normalised .*; row 0 \('a'\) has norm 1.02$"),
    # bfloat16 rows of 32 x 183/1024: norm sqrt(32) x 183/1024 = 1.0109, refused; a norm taken in bfloat16
    # itself rounds to 1.0078 and let them through
    ("text_features", torch.full((3, 32), 183 * 2**-10, dtype=torch.bfloat16),
     r"text_features must be normalised .*; row 0 \('a'\) has norm 1.011$"),
    ("model_config", "[32]", r"malformed metadata \(classnames must be a JSON list, model_config an object\)$"),
    # a list or a string where open_clip wants an object: AttributeError ('list' object has no attribute 'get')
    ("model_config", json.dumps({"embed_dim": 32, "vision_cfg": {}, "text_cfg": [1]}),
     r"model_config.text_cfg must be a JSON object, not \[1\]$"),
    ("model_config", json.dumps({"embed_dim": 32, "vision_cfg": "x", "text_cfg": {}}),
     r"model_config.vision_cfg must be a JSON object, not 'x'$"),
    ("model_config", json.dumps({"embed_dim": "32", "vision_cfg": {}, "text_cfg": {}}),
     r"model_config.embed_dim must be a positive integer, not '32'$"),
    ("model_config", json.dumps({"embed_dim": 32, "vision_cfg": {"layers": 20000}, "text_cfg": {}}),
     r"model_config.vision_cfg.layers: 20000 blocks, more than 1024"),
]


@pytest.mark.parametrize("key,value,error", BAD_CONTENTS)
def test_inconsistent_contents_are_one_line_user_errors(tmp_path, key, value, error):
    """A hand-edited or foreign file is refused at load, naming it (it used to fail later,
    e.g. with a traceback in the matrix product of scoring, or to score with NaN)."""
    _save(tmp_path / "p.safetensors")
    with safe_open(str(tmp_path / "p.safetensors"), framework="pt") as f:
        meta = dict(f.metadata())
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    if isinstance(value, torch.Tensor):
        tensors[key] = value
    elif value is None:
        del meta[key]
    else:
        meta[key] = value
    save_safetensors_by_hand(tmp_path / "bad.safetensors", tensors, metadata=meta)  # (float8 among them)
    if isinstance(value, torch.Tensor) and not safetensors_reads(value.dtype, tmp_path):
        error = "not a safetensors file"  # (an older safetensors does not read float8: that is the line then)
    with pytest.raises(UserError, match=rf"^--prompt {tmp_path / 'bad.safetensors'}: " + error):
        load_prompt(tmp_path / "bad.safetensors")


def test_half_and_double_precision_files_load(tmp_path):
    """A converted file may hold float16, bfloat16 or float64 tensors (their norms are 1 within
    1e-2), its metadata copied without the writer's sha256; with it, it is refused as changed."""
    path = tmp_path / "p.safetensors"
    for dtype in (torch.float16, torch.bfloat16, torch.float64):
        args = _save(path)
        tensors = {k: args[k].to(dtype) for k in ("ctx", "text_features")}
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata()
        save_file(tensors, str(path), metadata=meta)
        with pytest.raises(UserError, match=rf"^--prompt {path}: its metadata or tensors do not match its sha256 "
                                            r"\(changed after it was written: a damaged copy\?\); fit or export it "
                                            "again, or remove the key sha256 from a file edited on purpose$"):
            load_prompt(path)
        save_file(tensors, str(path), metadata={k: v for k, v in meta.items() if k != "sha256"})
        assert load_prompt(path).text_features.dtype == dtype


def test_a_prompt_file_changed_after_it_was_written_is_refused(tmp_path):
    """safetensors keeps no checksum: a flipped bit of ctx (whose values nothing else bounds) or
    of a letter of a class name loaded as another prompt, silently. The line names the one tensor
    that does not match the file's sha256, or its metadata (which each checksum covers); a
    damaged sha256 is refused likewise."""
    path = tmp_path / "p.safetensors"
    args = _save(path)
    raw = path.read_bytes()
    header_len = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + header_len])
    begin = 8 + header_len + header["ctx"]["data_offsets"][0]
    damaged = bytearray(raw)
    damaged[begin + 5] ^= 0x01  # (a bit of ctx[0, 1]: a value a little off, finite)
    path.write_bytes(bytes(damaged))
    with safe_open(str(path), framework="pt") as f:
        assert not torch.equal(f.get_tensor("ctx"), args["ctx"]) and torch.isfinite(f.get_tensor("ctx")).all()
    with pytest.raises(UserError, match=rf"^--prompt {path}: ctx does not match its sha256 \(changed after it "
                                        r"was written: a damaged copy\?\)"):
        load_prompt(path)
    letter = raw.index(b"b c", 8, 8 + header_len)  # (class 1's name, in the header's JSON)
    digit = raw.index(json.loads(header["__metadata__"]["sha256"])["ctx"].encode())  # (ctx's checksum, in hex)
    for at, byte, what in ((letter, b"c", "its metadata or tensors do"),  # (["a", "c c", "d"]: as valid a prompt)
                           (digit, b"0" if raw[digit:digit + 1] != b"0" else b"1", "ctx does")):
        damaged = bytearray(raw)
        damaged[at:at + 1] = byte
        path.write_bytes(bytes(damaged))
        with pytest.raises(UserError, match=rf"^--prompt {path}: {what} not match its sha256 \("):
            load_prompt(path)
    path.write_bytes(raw)
    assert torch.equal(load_prompt(path).ctx, args["ctx"])


def test_rows_of_norm_within_1e_2_of_1_load(tmp_path):
    """The tolerance is 1e-2 (bfloat16 rounding of normalised rows): rows of norm 1.009 and 0.991 load."""
    features = torch.cat([torch.full((2, 32), 1.009 * 32**-0.5), torch.full((1, 32), 0.991 * 32**-0.5)])
    _save(tmp_path / "p.safetensors", text_features=features)
    assert torch.equal(load_prompt(tmp_path / "p.safetensors").text_features, features)


def test_the_tensors_are_written_as_float32_whatever_their_dtype(tmp_path):
    """The format's tensors are float32: a float64 context and bfloat16 text features are written
    as float32 (the same numbers: each converts exactly)."""
    ctx = torch.arange(64, dtype=torch.float64).reshape(4, 16) / 8
    features = torch.full((3, 32), 0.1767578125, dtype=torch.bfloat16)  # (181/1024: norm 0.99987)
    _save(tmp_path / "p.safetensors", ctx=ctx, text_features=features)
    with safe_open(str(tmp_path / "p.safetensors"), framework="pt") as f:
        assert f.get_tensor("ctx").dtype == torch.float32 and f.get_tensor("text_features").dtype == torch.float32
    p = load_prompt(tmp_path / "p.safetensors")
    assert torch.equal(p.ctx, ctx.float()) and torch.equal(p.text_features, torch.full((3, 32), 181 / 1024))


def test_recorded_epochs_of_a_file_without_metadata_or_no_safetensors_is_none(tmp_path):
    """reproduce asks a stage's prompt how many epochs it holds: a safetensors file with no metadata
    at all, or a file that is no safetensors, records none (None), not a traceback."""
    from clip_smot.clip.prompt_file import recorded_epochs

    save_file({"ctx": torch.zeros(4, 16)}, str(tmp_path / "bare.safetensors"))
    assert recorded_epochs(tmp_path / "bare.safetensors") is None
    (tmp_path / "text.safetensors").write_text("not a safetensors file")
    assert recorded_epochs(tmp_path / "text.safetensors") is None
    _save(tmp_path / "p.safetensors", config={"epochs": 5, "run": {"epoch": 3}})
    assert recorded_epochs(tmp_path / "p.safetensors") == (3, 5)


def test_ctx_width_is_checked_against_the_model_config(tmp_path):
    ident = dict(IDENT, model_config=json.dumps({"embed_dim": 32, "vision_cfg": {}, "text_cfg": {"width": 16}}))
    _save(tmp_path / "p.safetensors", identity=ident)
    assert load_prompt(tmp_path / "p.safetensors").ctx.shape == (4, 16)
    _save(tmp_path / "bad.safetensors", identity=ident, ctx=torch.zeros(4, 24))
    with pytest.raises(UserError, match=r"bad.safetensors: ctx \(4, 24\) does not match \[4, 16\]"):
        load_prompt(tmp_path / "bad.safetensors")


def test_a_failed_save_keeps_the_old_file_and_leaves_no_temporary(tmp_path, monkeypatch):
    import safetensors.torch

    path = tmp_path / "p.safetensors"
    _save(path)
    before = path.read_bytes()

    def half_then_crash(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", half_then_crash)  # (runtime imports it when it writes)
    with pytest.raises(UserError, match=r"^cannot write .*p.safetensors: .*; the file there before is unchanged$"):
        _save(path, ctx=torch.ones(4, 16))  # (one line naming the file, no longer the bare OSError)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.safetensors"]


def test_a_prompt_whose_open_fails_is_one_line(tmp_path, monkeypatch):
    """The open(2) of the prompt inside safe_open, torch's UntypedStorage.from_file, failing (EIO,
    injected in a real eval --prompt: the 3rd of its 4 read-only opens) was torch's RuntimeError
    "unable to open file <PATH> in read-only mode: Input/output error (5)" as a traceback (the
    4th failing is one line: "cannot be read (Input/output error)"). One line naming --prompt."""
    path = tmp_path / "p.safetensors"
    _save(path)

    def fails(*args, **kwargs):
        raise RuntimeError(f"unable to open file <{path}> in read-only mode: Input/output error (5)")

    monkeypatch.setattr(torch.UntypedStorage, "from_file", fails)
    with pytest.raises(UserError, match=rf"^--prompt {path}: .*Input/output error") as e:
        load_prompt(path)
    assert str(e.value) == f"--prompt {path}: cannot be read (Input/output error)"  # (the disk's, no damage)


def test_a_prompt_torch_cannot_map_records_no_epochs_and_another_runtime_error_is_raised(tmp_path, monkeypatch):
    """recorded_epochs of a prompt torch cannot map (EIO) is None: the loader names the read.
    A RuntimeError that is not torch's open of the file (a bug of ours or of a library) is raised
    as it is by recorded_epochs and load_prompt alike, not called a damaged or unreadable file."""
    from clip_smot.clip.prompt_file import recorded_epochs

    path = tmp_path / "p.safetensors"
    _save(path)
    raised = [RuntimeError(f"unable to open file <{path}> in read-only mode: Input/output error (5)")]

    def fails(*args, **kwargs):
        raise raised[0]

    monkeypatch.setattr(torch.UntypedStorage, "from_file", fails)
    assert recorded_epochs(path) is None
    raised[0] = RuntimeError("a bug")
    with pytest.raises(RuntimeError, match="^a bug$"):
        recorded_epochs(path)
    with pytest.raises(RuntimeError, match="^a bug$"):
        load_prompt(path)


def test_written_files_get_an_ordinary_mode(tmp_path):
    """Atomic writes go through mkstemp (mode 0600); the result gets 0666 less the umask, as open() gives."""
    import os

    old = os.umask(0o022)
    try:
        _save(tmp_path / "p.safetensors")
    finally:
        os.umask(old)
    assert (tmp_path / "p.safetensors").stat().st_mode & 0o777 == 0o644


@pytest.mark.parametrize("key", ["hf_tokenizer_name", "hf_model_name"])
def test_a_config_from_a_file_may_not_name_a_hugging_face_tokenizer_or_model(tmp_path, key):
    """A prompt whose stored text_cfg named hf_tokenizer_name made open_clip's get_tokenizer load
    the tokenizer it named (a hub repository, a local folder; here a traceback, transformers being
    absent). A prompt's config, and a --model JSON, may not name one, nor a timm tower's weights
    or a timm model by a hub or folder name (timm fetched those); open_clip's own registered
    models that use one (SigLIP's tokenizer) still pass the shape check by name."""
    import open_clip

    from clip_smot.clip.config_checks import check_model_config
    from clip_smot.clip.model import load_clip

    config = {"embed_dim": 32, "vision_cfg": {}, "text_cfg": {key: str(tmp_path / "some_folder")}}
    _save(tmp_path / "p.safetensors", identity=dict(IDENT, model_config=json.dumps(config)))
    with pytest.raises(UserError) as e:
        load_prompt(tmp_path / "p.safetensors")
    assert str(e.value).startswith(f"--prompt {tmp_path / 'p.safetensors'}: model_config.text_cfg.{key} names a "
                                   "Hugging Face")
    (tmp_path / "m.json").write_text(json.dumps(config))
    with pytest.raises(UserError, match=rf"^--model {tmp_path / 'm.json'}: text_cfg.{key} names a Hugging Face"):
        load_clip(str(tmp_path / "m.json"), pretrained=None)
    for vision in ({"timm_model_name": "hf-hub:someone/evil"}, {"timm_model_name": "local-dir:/tmp/x"},
                   {"timm_model_name": "vit_base_patch16_224", "timm_model_pretrained": True}):
        (tmp_path / "t.json").write_text(json.dumps({"embed_dim": 32, "vision_cfg": vision, "text_cfg": {}}))
        with pytest.raises(UserError, match=rf"^--model {tmp_path / 't.json'}: vision_cfg.timm_model_"):
            load_clip(str(tmp_path / "t.json"), pretrained=None)
    siglip = open_clip.get_model_config("ViT-B-16-SigLIP")
    assert siglip["text_cfg"].get("hf_tokenizer_name")
    check_model_config(siglip, "--model ViT-B-16-SigLIP")  # (a name of open_clip's registry: no error)


@pytest.mark.parametrize("shapes,error", [
    ({"ctx": (10_000_000, 16), "text_features": (3, 32)}, r"ctx \(10000000, 16\) does not match \[4, d\]"),
    ({"ctx": (4, 16), "text_features": (10_000_000, 32)}, r"text_features \(10000000, 32\) do not match 3 class"),
])
def test_shapes_are_checked_from_the_header_before_any_tensor_is_loaded(tmp_path, monkeypatch, shapes, error):
    """A sparse file declaring ctx [10,000,000, 32] took 4 GB of memory before its shape was refused."""
    import clip_smot.clip.prompt_file as pf

    _save(tmp_path / "p.safetensors")
    with safe_open(str(tmp_path / "p.safetensors"), framework="pt") as f:
        meta = dict(f.metadata())
    write_sparse_safetensors(tmp_path / "bad.safetensors",
                             {"__metadata__": meta, **{k: {"dtype": "F32", "shape": list(v)} for k, v in shapes.items()}})
    assert (tmp_path / "bad.safetensors").stat().st_blocks * 512 < 1 << 20  # (a hole: nothing on disk)
    monkeypatch.setattr(pf, "safe_open", guarded_safe_open(safe_open))
    with pytest.raises(UserError, match=rf"^--prompt {tmp_path / 'bad.safetensors'}: " + error):
        load_prompt(tmp_path / "bad.safetensors")


def test_a_machine_whose_memory_is_unknown_loads_the_prompt(tmp_path, monkeypatch):
    """physical_memory() is None where the machine does not say: no memory cap, the prompt loads."""
    import clip_smot.clip.prompt_file as pf

    _save(tmp_path / "p.safetensors")
    monkeypatch.setattr(pf, "physical_memory", lambda: None)
    assert load_prompt(tmp_path / "p.safetensors").ctx.shape == (4, 16)


def test_tensors_larger_than_half_the_memory_are_refused_before_loading(tmp_path, monkeypatch):
    """Shapes that fit the metadata may still be huge (the metadata's widths are the file's too)."""
    import clip_smot.clip.prompt_file as pf

    _save(tmp_path / "p.safetensors")
    monkeypatch.setattr(pf, "physical_memory", lambda: 1000)  # (ctx and text_features take 8 x 160 bytes)
    monkeypatch.setattr(pf, "safe_open", guarded_safe_open(safe_open))
    with pytest.raises(UserError, match=r"p.safetensors: its tensors ctx \(4, 16\) and text_features \(3, 32\) "
                                        r"would take up to 0.0 GiB, more than half of this machine's 0.0 GiB$"):
        load_prompt(tmp_path / "p.safetensors")


def test_a_class_name_longer_than_the_cap_is_refused(tmp_path):
    """A class name of 40 million characters made a 240 MB CSV from 6 images, and a MemoryError with 60."""
    long_context = dict(IDENT, model_config=json.dumps({"embed_dim": 32, "vision_cfg": {},
                                                        "text_cfg": {"context_length": 2000}}))
    _save(tmp_path / "p.safetensors", classnames=["a", "bbbbbbbbb " * 100, "d"], identity=long_context)
    assert len(load_prompt(tmp_path / "p.safetensors").classnames[1]) == 1000
    _save(tmp_path / "bad.safetensors", classnames=["a", "b", "c" * 1001])
    with pytest.raises(UserError, match=rf"^--prompt {tmp_path / 'bad.safetensors'}: class 2's name has 1001 "
                                        r"characters, more than 1000$"):
        load_prompt(tmp_path / "bad.safetensors")


def test_class_names_whose_tokens_would_take_long_to_count_are_refused(tmp_path, monkeypatch):
    """Counting a name's tokens costs time quadratic in the length of its words (73 ms for one
    word of 1000 letters), and a header of 100 MB holds 100,000 such names: hours. A word holds
    at most 64 letters and all names 1 MiB of characters; and only names of more UTF-8 bytes than
    the context leaves them are tokenized at all."""
    import clip_smot.clip.prompt_file as pf

    long_context = dict(IDENT, model_config=json.dumps({"embed_dim": 32, "vision_cfg": {},
                                                        "text_cfg": {"context_length": 2000}}))
    for names, error in ((["a", "b", "c" * 65], r"class 2's name holds a word of 65 letters \(cccccccccccccccccccc...\), "
                                                r"more than 64$"),
                         # (the longest word of a name, not its first nor its shortest)
                         (["a", "b " + "c" * 65 + " d", "e"], r"class 1's name holds a word of 65 letters "
                                                               r"\(cccccccccccccccccccc...\), more than 64$"),
                         ([f"{k:05d} " + "b" * 60 for k in range(17000)], r"its 17000 class names hold 1122000 "
                                                                          r"characters, more than 1048576$")):
        _save(tmp_path / "bad.safetensors", classnames=names, identity=long_context)
        with pytest.raises(UserError, match=rf"^--prompt {tmp_path / 'bad.safetensors'}: " + error):
            load_prompt(tmp_path / "bad.safetensors")
    counted = []
    monkeypatch.setattr(pf, "count_tokens", lambda names: counted.extend(names) or [len(n.split()) for n in names])
    _save(tmp_path / "p.safetensors", classnames=["tench", "great white shark", "x " * 35, "y " * 36],
          text_features=torch.nn.functional.normalize(torch.randn(4, 32), dim=-1))
    load_prompt(tmp_path / "p.safetensors")  # (n_ctx 4 of 77 tokens leaves 70 for a name)
    assert counted == ["y " * 36]


@pytest.mark.parametrize("n_ctx,classnames,error", [
    (0, ["a", "b c", "d"], r"n_ctx 0 is not in \[1, 74\]"),
    (200, ["a", "b c", "d"], r"n_ctx 200 is not in \[1, 74\]"),
    (75, ["a", "b c", "d"], r"n_ctx 75 is not in \[1, 74\]"),  # (one past the edge: 1 + 75 + 2 = 78 tokens, no name)
    (74, ["a", "b c", "d"], r"the prompt of class 1 \('b c', a name of 2 tokens\) needs 79 of the model's 77 tokens "
                            r"with n_ctx 74$"),
    # one token too many at the edge: 71 digits are 71 bytes and 71 tokens, one more than the 70 that
    # n_ctx 4 leaves a name (a name of no more bytes than that is not tokenized: it cannot overflow)
    (4, ["a", "1" * 71, "d"], (rf"the prompt of class 1 \('{'1' * 40}', a name of 71 tokens\) needs 78 of the "
                               r"model's 77 tokens with n_ctx 4$")),
])
def test_n_ctx_and_the_class_names_must_fit_the_context_length(tmp_path, n_ctx, classnames, error):
    """A prompt of n_ctx 0 or 200 was read, then refused naming --n-ctx, a flag score does not have."""
    _save(tmp_path / "p.safetensors", n_ctx=n_ctx, ctx=torch.zeros(n_ctx, 16), classnames=classnames)
    with pytest.raises(UserError, match=rf"^--prompt {tmp_path / 'p.safetensors'}: " + error):
        load_prompt(tmp_path / "p.safetensors")


def test_the_longest_prompt_that_fits_loads(tmp_path):
    _save(tmp_path / "p.safetensors", n_ctx=73, ctx=torch.zeros(73, 16), classnames=["a", "b", "d"])
    assert load_prompt(tmp_path / "p.safetensors").n_ctx == 73  # (1 + 73 + 1 + 2 = 77 tokens)
    _save(tmp_path / "p.safetensors", n_ctx=4, classnames=["a", "1" * 70, "d"])
    assert load_prompt(tmp_path / "p.safetensors").classnames[1] == "1" * 70  # (1 + 4 + 70 + 2 = 77 tokens)
    _save(tmp_path / "p.safetensors", n_ctx=74, ctx=torch.zeros(74, 16), classnames=[""],
          text_features=torch.full((1, 32), 32**-0.5))
    assert load_prompt(tmp_path / "p.safetensors").n_ctx == 74  # (an empty name: 1 + 74 + 0 + 2 = 77 tokens)


def test_the_shortest_context_and_a_tokenized_name_that_fills_the_prompt_load(tmp_path):
    """n_ctx 1 is in [1, 74]; and a name of 35 一 (105 UTF-8 bytes, more than the 70 tokens n_ctx 4
    leaves it, so it is tokenized) is 70 tokens in open_clip's tokenizer: 1 + 4 + 70 + 2 = 77
    tokens, exactly the model's, and loads (only more than 77 is refused)."""
    import open_clip

    _save(tmp_path / "p.safetensors", n_ctx=1, ctx=torch.zeros(1, 16))
    assert load_prompt(tmp_path / "p.safetensors").n_ctx == 1
    name = "一" * 35
    assert len(name.encode("utf-8")) == 105 and int(open_clip.tokenize([name]).argmax()) - 1 == 70
    _save(tmp_path / "p.safetensors", classnames=["a", name, "d"])
    assert load_prompt(tmp_path / "p.safetensors").classnames[1] == name


@pytest.mark.parametrize("run, note", [({"epoch": 3}, "holds the context of epoch 3 of its run's 5"),
                                       ({"epoch": 5}, None), ({}, None),
                                       # (a hand-edited count: a string was a TypeError, True an "epoch 1")
                                       ({"epoch": "3"}, None), ({"epoch": True}, None)])
def test_only_a_prompt_of_an_unfinished_run_gets_the_note(tmp_path, run, note):
    """The note is for a context exported before its run's last epoch: not for epoch 5 of 5, nor
    for a prompt that records no epoch."""
    _save(tmp_path / "p.safetensors", config={"epochs": 5, "run": run})
    said = unfinished_note(load_prompt(tmp_path / "p.safetensors"))
    assert said is None if note is None else note in said


def test_class_names_keep_their_order_and_a_class_specific_context_its_layout(tmp_path):
    """Row k of text_features is class k: the names are written in the order given, not sorted;
    a class-specific context [K, n_ctx, d] of 3 classes and 4 vectors reads back as csc, n_ctx 4."""
    _save(tmp_path / "p.safetensors", classnames=["zebra", "ant", "moth"], csc=True, ctx=torch.randn(3, 4, 16))
    p = load_prompt(tmp_path / "p.safetensors")
    assert p.classnames == ["zebra", "ant", "moth"] and p.csc is True and p.n_ctx == 4 and p.ctx.shape == (3, 4, 16)


def test_a_prompt_without_a_config_entry_loads_with_an_empty_config(tmp_path):
    """A prompt of an older clip-smot has no ``config`` metadata: it loads, with config {} (and no
    unfinished-run note)."""
    _save(tmp_path / "p.safetensors")
    with safe_open(str(tmp_path / "p.safetensors"), framework="pt") as f:
        meta = {k: v for k, v in f.metadata().items() if k not in ("config", "sha256")}  # (nor had it sha256)
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    save_file(tensors, str(tmp_path / "old.safetensors"), metadata=meta)
    old = load_prompt(tmp_path / "old.safetensors")
    assert old.config == {} and unfinished_note(old) is None


def test_class_names_at_the_caps_load(tmp_path, monkeypatch):
    """The caps are inclusive: a word of 64 letters, and class names of exactly 1 MiB of
    characters together (2048 names of 512), load."""
    import clip_smot.clip.prompt_file as pf

    long_context = dict(IDENT, model_config=json.dumps({"embed_dim": 32, "vision_cfg": {},
                                                        "text_cfg": {"context_length": 2000}}))
    _save(tmp_path / "p.safetensors", classnames=["a", "b" * 64, "d"], identity=long_context)
    assert load_prompt(tmp_path / "p.safetensors").classnames[1] == "b" * 64
    name = ("b" * 63 + " ") * 8  # 512 characters, words of 63 letters
    monkeypatch.setattr(pf, "count_tokens", lambda names: [1] * len(names))  # (cheap; none overflows 2000)
    _save(tmp_path / "p.safetensors", classnames=[name] * 2048, identity=long_context,
          text_features=torch.full((2048, 32), 32**-0.5))
    assert sum(map(len, load_prompt(tmp_path / "p.safetensors").classnames)) == 2**20


def test_a_name_of_few_characters_but_many_bytes_is_tokenized(tmp_path):
    """Names are tokenized only where their UTF-8 bytes could overflow: 36 characters of 一 (3
    bytes each) are 108 bytes, more than the 70 tokens n_ctx 4 leaves a name, and 72 tokens in
    open_clip's tokenizer (2 a character): 1 + 4 + 72 + 2 = 79 tokens, refused. Counted in
    characters (36) the name was never tokenized and was let through."""
    import open_clip

    name = "一" * 36
    assert int(open_clip.tokenize([name]).argmax()) - 1 == 72  # (start token, 72, end token)
    _save(tmp_path / "p.safetensors", classnames=["a", name, "d"])
    with pytest.raises(UserError, match=rf"^--prompt {tmp_path / 'p.safetensors'}: the prompt of class 1 "
                                        r"\('一{36}', a name of 72 tokens\) needs 79 of the model's 77 tokens with n_ctx 4$"):
        load_prompt(tmp_path / "p.safetensors")


def test_tensors_are_sized_at_8_bytes_a_value_against_half_the_memory(tmp_path, monkeypatch):
    """ctx [4, 16] and text_features [3, 32] hold 160 values, up to 1280 bytes as float64: refused
    on a machine of 2558 bytes (half: 1279), loaded on one of 2560 (half: 1280)."""
    import clip_smot.clip.prompt_file as pf

    _save(tmp_path / "p.safetensors")
    monkeypatch.setattr(pf, "physical_memory", lambda: 2558)
    with pytest.raises(UserError, match=r"p.safetensors: its tensors ctx \(4, 16\) and text_features \(3, 32\) "
                                        r"would take up to 0.0 GiB"):
        load_prompt(tmp_path / "p.safetensors")
    monkeypatch.setattr(pf, "physical_memory", lambda: 2560)
    assert load_prompt(tmp_path / "p.safetensors").ctx.shape == (4, 16)


@pytest.mark.parametrize("model,advice", [
    # open_clip's own architecture: its -quickgelu name, the suffix once (not -quickgelu-quickgelu)
    ("ViT-B-16-quickgelu", r"for OpenAI's weights in a state-dict file, --model ViT-B-16-quickgelu$"),
    # a model-config JSON's (its name: the file's stem): "--model clip-smot-tiny-quickgelu" was
    # advised, a name open_clip does not know; the config the prompt was made with is asked for
    ("clip-smot-tiny", r"give the --model config the prompt was made with \(clip-smot-tiny's, which sets "
                       r"quick_gelu\)$"),
])
def test_a_quickgelu_prompt_on_gelu_weights_is_sent_to_a_model_that_exists(tmp_path, model, advice):
    """A prompt made with QuickGELU on a model built with GELU: the error names both activations
    and a --model that gives QuickGELU."""
    quick = {"embed_dim": 32, "quick_gelu": True, "vision_cfg": {}, "text_cfg": {}}
    ident = dict(IDENT, model=model, model_config=json.dumps(quick), activation="quick_gelu")
    _save(tmp_path / "p.safetensors", identity=ident)
    prompt = load_prompt(tmp_path / "p.safetensors")
    gelu = dict(IDENT, model_config=json.dumps({"embed_dim": 32, "vision_cfg": {}, "text_cfg": {}}))
    with pytest.raises(UserError, match=r"made with QuickGELU .* is built with GELU; " + advice):
        prompt.check_model(gelu)


def test_a_gelu_prompt_on_quickgelu_weights_is_to_be_fitted_again(tmp_path):
    """The other way round, a prompt made with GELU on a model built with QuickGELU: no --model
    turns the weights' QuickGELU into GELU, so the advice is to fit the context again with them."""
    _save(tmp_path / "p.safetensors", identity=dict(IDENT, activation="gelu"))
    prompt = load_prompt(tmp_path / "p.safetensors")
    quick = dict(IDENT, model_config=json.dumps({"embed_dim": 32, "quick_gelu": True, "vision_cfg": {}, "text_cfg": {}}))
    with pytest.raises(UserError, match=r"made with GELU \(clip-smot-tiny, tiny.safetensors\), but the model in use "
                                        r"\(clip-smot-tiny, tiny.safetensors\) is built with QuickGELU; a context learned "
                                        r"through GELU does not fit QuickGELU weights: fit it again with them$"):
        prompt.check_model(quick)


def test_a_prompt_without_an_activation_record_is_read_as_its_config_builds(tmp_path):
    """A prompt written before the ``activation`` key existed was built as its model_config says:
    one whose config sets quick_gelu reads as QuickGELU (not GELU, which would refuse it as
    malformed), and one without it as GELU."""
    for config, activation in (({"embed_dim": 32, "quick_gelu": True, "vision_cfg": {}, "text_cfg": {}}, "quick_gelu"),
                               ({"embed_dim": 32, "vision_cfg": {}, "text_cfg": {}}, "gelu")):
        _save(tmp_path / "p.safetensors", identity=dict(IDENT, model_config=json.dumps(config)))
        with safe_open(str(tmp_path / "p.safetensors"), framework="pt") as f:
            meta = {k: v for k, v in f.metadata().items() if k not in ("activation", "sha256")}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        save_file(tensors, str(tmp_path / "old.safetensors"), metadata=meta)
        assert load_prompt(tmp_path / "old.safetensors").activation == activation


@pytest.mark.parametrize("class_position,csc", [("end", False), ("middle", True), ("front", False)])
def test_the_metadata_is_written_as_the_format_documents_it(tmp_path, class_position, csc):
    """docs/method.md §2: format "clip-smot-prompt", format_version "1", every value a string (csc
    "true"/"false", the class names and the config as JSON, the config's keys sorted), read here
    with safetensors itself; and each class position reads back (a file of clip-smot's own format,
    "front" or "middle" among them, must load)."""
    from clip_smot import __version__

    ctx = torch.randn(3, 4, 16) if csc else torch.randn(4, 16)
    _save(tmp_path / "p.safetensors", ctx=ctx, class_position=class_position, csc=csc, config={"lr": 0.002, "epochs": 5})
    with safe_open(str(tmp_path / "p.safetensors"), framework="pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    sha256 = json.loads(meta.pop("sha256"))
    assert meta == {"format": "clip-smot-prompt", "format_version": "1", "library_version": __version__,
                    "model": "clip-smot-tiny", "model_config": IDENT["model_config"], "pretrained": "tiny.safetensors",
                    "checkpoint_sha256": "ab" * 32, "activation": "gelu", "n_ctx": "4",
                    "class_position": class_position, "csc": "true" if csc else "false",
                    "classnames": '["a", "b c", "d"]', "config": '{"epochs": 5, "lr": 0.002}'}
    # sha256: per tensor, SHA-256 of the other metadata as sorted JSON, "NAME DTYPE [SHAPE]" and its bytes
    for name, t in tensors.items():
        head = json.dumps(meta, sort_keys=True) + f"{name} torch.float32 {list(t.shape)}"
        assert sha256[name] == hashlib.sha256(head.encode() + t.numpy().tobytes()).hexdigest()
    p = load_prompt(tmp_path / "p.safetensors")
    assert p.class_position == class_position and p.csc is csc and p.ctx.shape == ctx.shape


def test_a_file_of_another_kind_is_named_as_such_not_read_as_a_broken_prompt(tmp_path):
    """A model file of clip-smot train (safetensors, format "clip-smot-model") given as a prompt is
    named for what it is and where it goes, not refused as a prompt missing its tensors."""
    path = tmp_path / "model.safetensors"
    save_file({"fc.weight": torch.zeros(2, 8)}, str(path), metadata={"format": "clip-smot-model", "format_version": "1"})
    with pytest.raises(UserError, match=rf"^--prompt {path}: a model file of clip-smot train \(.safetensors\), not a "
                                        r"prompt file; "):
        load_prompt(path)


def test_a_class_name_holding_a_lone_surrogate_is_sized_not_a_traceback(tmp_path):
    """JSON may escape a lone surrogate ("\\ud800"), which no UTF-8 encodes: a name's bytes are
    counted with surrogatepass (3 bytes, as CESU-8 writes it), so such a name is sized like any
    other and the prompt loads, the name kept as written."""
    _save(tmp_path / "p.safetensors", classnames=["a", "b\ud800", "d"])
    assert load_prompt(tmp_path / "p.safetensors").classnames == ["a", "b\ud800", "d"]


def test_classnames_problem_of_no_class_names_is_said():
    """classnames_problem([]) stopped on max() of nothing ("max() iterable argument is empty")."""
    from clip_smot.clip.prompt_file import classnames_problem

    assert classnames_problem([]) == "it names no class"
    assert classnames_problem(["a", "b"]) is None
