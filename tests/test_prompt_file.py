import json

import pytest
import torch
from safetensors.torch import safe_open, save_file

from clip_smot.errors import UserError
from clip_smot.prompt_file import load_prompt, save_prompt

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
    assert p.check_model(IDENT) is True
    other_weights = dict(IDENT, checkpoint_sha256="cd" * 32)
    assert p.check_model(other_weights) is False
    other_arch = dict(IDENT, model="ViT-B-16", model_config=json.dumps({"embed_dim": 512}))
    with pytest.raises(UserError, match="made for model clip-smot-tiny"):
        p.check_model(other_arch)


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


@pytest.mark.parametrize("key,value", [("classnames", "[not json"), ("model_config", "{"), ("n_ctx", "four"),
                                       ("config", "{oops}"), ("classnames", '"a string"')])
def test_malformed_metadata_is_one_line_user_error(tmp_path, key, value):
    _save(tmp_path / "p.safetensors")
    with safe_open(str(tmp_path / "p.safetensors"), framework="pt") as f:
        meta = dict(f.metadata())
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    meta[key] = value
    save_file(tensors, str(tmp_path / "bad.safetensors"), metadata=meta)
    with pytest.raises(UserError, match="bad.safetensors: malformed metadata"):
        load_prompt(tmp_path / "bad.safetensors")


def test_a_failed_save_keeps_the_old_file_and_leaves_no_temporary(tmp_path, monkeypatch):
    import clip_smot.prompt_file as pf

    path = tmp_path / "p.safetensors"
    _save(path)
    before = path.read_bytes()

    def half_then_crash(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(pf, "save_file", half_then_crash)
    with pytest.raises(OSError, match="disk full"):
        _save(path, ctx=torch.ones(4, 16))
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.safetensors"]
