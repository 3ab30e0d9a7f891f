"""clip_smot.common.configs: every command's options declared once (default, range or choices,
help), checked in one line naming the flag, round-tripped through JSON, and the same on the
command line."""

import dataclasses
import json

import click
import pytest
from click.testing import CliRunner

from clip_smot.cli import cli
from clip_smot.clip.evaluate import ClipEvalConfig
from clip_smot.clip.fit import ExportConfig, FitConfig
from clip_smot.clip.score import ScoreConfig, run_score
from clip_smot.common.configs import (
    MAX_BATCH,
    MAX_SEED,
    MAX_WORKERS,
    check_field_types,
    check_ranges,
    check_smot_only,
    flag_of,
    setting,
)
from clip_smot.common.errors import UserError
from clip_smot.common.reports import EvalConfig
from clip_smot.reproduce import ReproduceOptions, run_reproduce
from clip_smot.resnet.evaluate import ResnetEvalConfig, run_resnet_eval
from clip_smot.resnet.train import TrainConfig

# each command's configs, and its click parameters named otherwise than their field
COMMANDS = {"fit": (FitConfig,), "train": (TrainConfig,), "score": (ScoreConfig,),
            "eval": (EvalConfig, ClipEvalConfig, ResnetEvalConfig), "export": (ExportConfig,),
            "reproduce": (ReproduceOptions,)}
RENAMED = {"split_file": "split", "compile_": "compile", "fpr_convention": "convention"}
NOT_CONFIG = {("train", "resume"), ("train", "dry_run"), ("fit", "resume"), ("fit", "dry_run"),  # run_*'s arguments
              ("score", "paths"),  # PATHS
              ("reproduce", "table"), ("reproduce", "dry_run")}  # run_reproduce's arguments


def _configs():
    return [
        FitConfig(data="d", shots=4, split="s.txt", seed=7, lam=0.25, T=10.0, compile=False, cuda_graph=None),
        TrainConfig(out="o", stage="smot", dataset="digits", cam_model="m", epochs=3, lr=0.5, T=None, seed=3),
        ScoreConfig(prompt="p", paths=("a", "b/c.txt"), out="o.csv", scores="mcm,msp", batch_size=8,
                    use_cache=False),
        ClipEvalConfig(id_data="digits", ood={"photos": None, "mine": "x/"}, out="e", prompt="p", split="s.txt",
                       scores="knn", convention="openood", use_cache=False),
        ResnetEvalConfig(id_data="cifar10", ood={"svhn": None}, out="e", checkpoint="m.safetensors", workers=0),
    ]


@pytest.mark.parametrize("cfg", _configs(), ids=lambda c: type(c).__name__)
def test_configs_round_trip_through_json(cfg):
    text = json.dumps(dataclasses.asdict(cfg))  # what a saved config.json holds
    read = type(cfg).from_dict if hasattr(cfg, "from_dict") else lambda d: type(cfg).from_json(json.dumps(d))
    back = read(json.loads(text))
    assert back == cfg and type(back) is type(cfg)
    if hasattr(cfg, "to_json"):
        assert type(cfg).from_json(cfg.to_json()) == cfg


@pytest.mark.parametrize("cfg", [c for c in _configs() if hasattr(c, "to_json")], ids=lambda c: type(c).__name__)
def test_to_json_is_the_configs_fields_with_sorted_keys_and_two_space_indents(cfg):
    """A config's JSON text is stable however its fields are declared: keys sorted, two spaces an
    indent, as json.dumps writes them (so that two configs' texts can be compared line by line)."""
    def sorted_everywhere(value) -> bool:  # (an eval config's --ood mapping is a dict too)
        return not isinstance(value, dict) or (list(value) == sorted(value)
                                               and all(sorted_everywhere(v) for v in value.values()))

    text = cfg.to_json()
    read = json.loads(text)
    assert list(read) == sorted(f.name for f in dataclasses.fields(cfg)) and sorted_everywhere(read)
    assert text == json.dumps(read, indent=2)  # (its own order kept: only the indent is compared)
    assert type(cfg).from_dict(read) == cfg


def test_a_tuple_comes_back_as_a_tuple():
    cfg = ScoreConfig.from_json('{"prompt": "p", "paths": ["a", "b"], "out": "o.csv", "unknown": 1}')
    assert cfg.paths == ("a", "b") and cfg.batch_size == 256  # (an unknown key is ignored)


@pytest.mark.parametrize("cfg, message", [
    (FitConfig(lam=1.5), "--lam 1.5: must be in [0, 1]"),
    (FitConfig(alpha=0.0), "--alpha 0.0: must be > 0"),
    (FitConfig(sigma=float("inf")), "--sigma inf: must be a finite number"),
    (FitConfig(lam=10**400), f"--lam {10**400}: must be in [0, 1]"),  # (a hand-edited file: was an OverflowError)
    # past float64, under a range open above: the cosine schedule's float division would overflow
    (FitConfig(epochs=10**309), f"--epochs {10**309}: must be >= 1 and at most 1.79769e+308 (float64's largest)"),
    (TrainConfig(out="o", epochs=-10**309), f"--epochs {-10**309}: must be >= 1"),
    (FitConfig(loss="focal"), "--loss focal: must be one of smot, ce, ls, logitnorm"),
    (FitConfig(crop_scale=0.0), "FitConfig.crop_scale 0.0: must be in (0, 1]"),  # (no flag: the field)
    (TrainConfig(out="o", input_size=7), "--input-size 7: must be in [8, 1024]"),
    (TrainConfig(out="o", batch_size=0), "--batch-size 0: must be in [1, 4096]"),
    (TrainConfig(out="o", stage="final"), "--stage final: must be one of base, smot"),
    (ScoreConfig(prompt="p", paths=("a",), out="o", workers=257), "--workers 257: must be in [0, 256]"),
    (ScoreConfig(prompt="p", paths=("a",), out="o", batch_size="8"), "--batch-size 8: must be a number"),
    (ClipEvalConfig(id_data="i", ood={}, out="o", convention="ood"),
     "--fpr-convention ood: must be one of id, openood"),
    (ResnetEvalConfig(id_data="i", ood={}, out="o", checkpoint="m", batch_size=5000),
     "--batch-size 5000: must be in [1, 4096]"),
])
def test_a_value_out_of_range_is_one_line_naming_the_flag(cfg, message):
    with pytest.raises(UserError) as e:
        check_ranges(cfg)
    assert str(e.value) == message


def test_the_library_refuses_what_the_command_line_refuses(tmp_path):
    """score and eval check their configs before reading anything: a caller of the library gets
    the command line's one line."""
    with pytest.raises(UserError, match=r"^--batch-size 0: must be in \[1, 4096\]$"):
        run_score(ScoreConfig(prompt=str(tmp_path / "missing"), paths=(str(tmp_path),), out=str(tmp_path / "o.csv"),
                              batch_size=0))
    with pytest.raises(UserError, match=r"^--workers -1: must be in \[0, 256\]$"):
        run_resnet_eval(ResnetEvalConfig(id_data="digits", ood={}, out=str(tmp_path / "e"), checkpoint="m",
                                         workers=-1))
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    with pytest.raises(UserError, match=r"^--shots 0: "):
        run_reproduce("table8", ReproduceOptions(out=str(tmp_path / "r"), imagenet="i", ood_root="o", shots=0),
                      lambda argv: None, dry_run=True)
    with pytest.raises(UserError, match=r"^--batch-size 5000: must be in \[1, 4096\]$"):
        run_reproduce("table8", ReproduceOptions(out=str(tmp_path / "r"), batch_size=5000), lambda argv: None)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def _fields(command):
    found = {}
    for config in COMMANDS[command]:
        found.update({f.name: f for f in dataclasses.fields(config)})
    return found


@pytest.mark.parametrize("command", list(COMMANDS))
def test_the_click_options_are_the_config_declarations(command):
    fields = _fields(command)
    exposed = set()
    for param in cli.commands[command].params:
        if (command, param.name) in NOT_CONFIG:
            continue
        name = RENAMED.get(param.name, param.name)
        field = fields[name]  # every other flag fills a field
        exposed.add(name)
        meta = field.metadata
        assert param.opts[0] == flag_of(field) and param.help == meta["help"], name
        if field.default is not dataclasses.MISSING:
            assert param.default == field.default, name
        if meta["choices"] is not None:
            assert list(param.type.choices) == list(meta["choices"]), name
        if meta["min"] is not None or meta["max"] is not None:
            rng = param.type
            assert (rng.min, rng.max, rng.min_open) == (meta["min"], meta["max"], meta["min_open"]), name
        if meta["path"] is not None:
            assert isinstance(param.type, click.Path), name
            assert (param.type.file_okay, param.type.dir_okay) == {"file": (True, False), "dir": (False, True),
                                                                   "any": (True, True)}[meta["path"]], name
    flagged = {n for n, f in fields.items() if flag_of(f)}
    assert exposed == flagged  # and every field with a flag has its option


def test_a_few_options_as_the_docs_state_them():
    """Written out from docs/fit.md, docs/score.md and docs/resnet.md, not read from the configs."""
    params = {c: {p.opts[0]: p for p in cli.commands[c].params} for c in ("fit", "score", "train", "eval")}
    lam = params["fit"]["--lam"].type
    assert (lam.min, lam.max, params["fit"]["--lam"].default) == (0, 1, 0.1)
    assert params["fit"]["--split"].name == "split_file" and params["train"]["--compile"].name == "compile_"
    assert (params["train"]["--input-size"].type.min, params["train"]["--input-size"].type.max) == (8, 1024)
    assert list(params["train"]["--arch"].type.choices) == ["resnet18", "wrn40_2", "densenet_bc", "resnet_tiny"]
    assert params["score"]["--batch-size"].default == 256 and params["score"]["--prompt"].required
    assert params["eval"]["--ood"].multiple and params["eval"]["--ood"].required
    assert not params["eval"]["--checkpoint"].required  # (one of --prompt, --zero-shot, --checkpoint)


def test_help_lists_the_flags_in_the_docs_order_with_their_defaults():
    """fit --help lists its flags in the order of docs/fit.md's table, each with the default that
    table gives (click shows it as "[default: ...]")."""
    fit = cli.commands["fit"]
    text = CliRunner().invoke(cli, ["fit", "--help"]).output
    at = [text.index(f"  {flag} ") for flag in ("--data", "--shots", "--split", "--alpha", "--beta")]
    assert at == sorted(at), at
    ctx = fit.make_context("fit", ["--help"], resilient_parsing=True)
    helps = {p.opts[0]: p.get_help_record(ctx)[1] for p in fit.params if p.get_help_record(ctx)}
    for flag, default in (("--shots", "16"), ("--lam", "0.1"), ("--alpha", "50"), ("--beta", "20"),
                          ("--loss", "smot")):
        assert f"[default: {default}" in helps[flag], (flag, helps[flag])


def test_no_cache_turns_the_cache_off():
    base = ["--prompt", "p.safetensors", "--out", "o.csv", "x.png"]
    assert cli.commands["score"].make_context("score", list(base)).params["use_cache"] is True
    assert cli.commands["score"].make_context("score", [*base, "--no-cache"]).params["use_cache"] is False


def test_a_setting_decided_by_the_device_has_an_on_and_an_off_flag():
    """fit's --cuda-graph / --no-cuda-graph and --compile / --no-compile (docs/fit.md): on, off, or
    neither given (None: the device decides); train's --compile (off by default) is a plain flag."""
    fit, train = cli.commands["fit"], cli.commands["train"]
    for name, flag in (("cuda_graph", "--cuda-graph"), ("compile", "--compile")):
        assert [fit.make_context("fit", list(a)).params[name]
                for a in ((), (flag,), (f"--no-{flag[2:]}",))] == [None, True, False], name
    base = ["--dataset", "digits", "--out", "o"]
    assert [train.make_context("train", [*base, *a]).params["compile_"] for a in ((), ("--compile",))] == [False, True]


def test_a_range_violation_on_the_command_line_is_one_line(tmp_path):
    res = CliRunner().invoke(cli, ["score", "--prompt", "p", "--out", str(tmp_path / "o.csv"), "--batch-size", "0",
                                   str(tmp_path)])
    assert res.exit_code != 0 and len(res.output.strip().splitlines()) == 1 and "--batch-size" in res.output


def test_fit_device_choices_are_the_command_lines_only():
    """fit's --device offers auto, cpu and cuda; from Python a FitConfig takes cuda:N too (the
    device code checks it), as before the options were declared in the config."""
    check_ranges(FitConfig(device="cuda:1"))
    res = CliRunner().invoke(cli, ["fit", "--device", "cuda:1", "--dry-run"])
    assert res.exit_code != 0 and "--device" in res.output and len(res.output.strip().splitlines()) == 1


def test_the_ends_of_a_closed_range_are_in_it():
    """[0, 1] holds 0 and 1; (0, 1] holds 1 and not 0; [0, MAX] holds MAX (docs: the bounds as written)."""
    check_ranges(FitConfig(lam=0.0, momentum=1.0, sigma=0.0, weight_decay=0.0, warmup_epochs=0, seed=0, workers=0,
                           shots=1, n_ctx=1, epochs=1, batch_size=1, crop_scale=1.0))
    check_ranges(FitConfig(lam=1.0, momentum=0.0, seed=MAX_SEED, workers=MAX_WORKERS, batch_size=MAX_BATCH))
    for cfg, message in [(FitConfig(momentum=1.000001), "--momentum 1.000001: must be in [0, 1]"),
                         (FitConfig(seed=MAX_SEED + 1), f"--seed {MAX_SEED + 1}: must be in [0, {MAX_SEED}]"),
                         (FitConfig(warmup_lr=0.0), "--warmup-lr 0.0: must be in (0, 1e+38]"),
                         (FitConfig(shots=0), "--shots 0: must be >= 1")]:
        with pytest.raises(UserError) as e:
            check_ranges(cfg)
        assert str(e.value) == message


def test_a_bool_is_no_number_and_an_int_is_a_float():
    """JSON's true in a hand-edited config is no epoch count (Python's True == 1); JSON's 1 is a float."""
    with pytest.raises(UserError) as e:
        check_ranges(FitConfig(epochs=True))
    assert str(e.value) == "--epochs True: must be a number"
    with pytest.raises(UserError) as e:
        check_field_types(FitConfig(n_ctx=True), "config.json")
    assert str(e.value) == "config.json: its configuration's n_ctx is True, not int"
    check_field_types(FitConfig(lam=1, T=200, alpha=50), "config.json")  # (JSON writes 1.0 as 1 elsewhere)
    check_ranges(FitConfig(lam=1, T=200, alpha=50))


def test_a_declared_range_is_checked_as_declared():
    """check_ranges serves any config declared with setting(): a maximum alone is ``<=`` its bound,
    a minimum alone ``>=`` (``>`` when open); a value at a bound is in the range."""
    @dataclasses.dataclass(frozen=True)
    class Options:
        most: int = setting(5, max=5)
        least: float = setting(0.0, min=0)
        above: float = setting(1.0, min=0, min_open=True)

    check_ranges(Options())
    for options, message in [(Options(most=6), "--most 6: must be <= 5"),
                             (Options(least=-0.5), "--least -0.5: must be >= 0"),
                             (Options(above=0.0), "--above 0.0: must be > 0")]:
        with pytest.raises(UserError) as e:
            check_ranges(options)
        assert str(e.value) == message


def test_a_saved_configuration_of_another_type_is_refused_by_name():
    """A hand-edited config.json may hold a string, a list or an int where the code expects
    another type: each is one line naming the field, not a run with "16" context vectors."""
    for cfg, field, value, kind in [(FitConfig(n_ctx="16"), "n_ctx", "'16'", "int"),
                                    (FitConfig(lam="0.1"), "lam", "'0.1'", "float"),
                                    (FitConfig(ctx_init=3), "ctx_init", "3", "str | None"),
                                    (FitConfig(model=["ViT-B-16"]), "model", "['ViT-B-16']", "str"),
                                    (FitConfig(csc=1), "csc", "1", "bool")]:
        with pytest.raises(UserError) as e:
            check_field_types(cfg, "config.json")
        assert str(e.value) == f"config.json: its configuration's {field} is {value}, not {kind}"
    check_field_types(FitConfig(ctx_init="a photo of a", data=None), "config.json")


def test_the_largest_seed_is_the_largest_int64():
    """Seeds are drawn from [0, 2**63 - 1]: numpy's default_rng takes no negative seed and torch
    one of 64 bits; the largest int64 is accepted by both and by the configs, one more is not."""
    import numpy as np
    import torch

    assert MAX_SEED == np.iinfo(np.int64).max == 9223372036854775807
    torch.Generator().manual_seed(MAX_SEED)
    np.random.default_rng(MAX_SEED)
    check_ranges(TrainConfig(out="o", seed=9223372036854775807))
    with pytest.raises(UserError) as e:
        check_ranges(TrainConfig(out="o", seed=9223372036854775808))
    assert str(e.value) == "--seed 9223372036854775808: must be in [0, 9223372036854775807]"


@pytest.mark.parametrize("cls", [FitConfig, TrainConfig, ScoreConfig, EvalConfig, ClipEvalConfig, ResnetEvalConfig],
                         ids=lambda c: c.__name__)
@pytest.mark.parametrize("value", [[1, 2], 3, "x", None], ids=repr)
def test_from_dict_of_no_dict_is_a_type_error_naming_what_it_got(cls, value):
    """A JSON list or number where a config's object belongs (a hand-edited config.json) was an
    AttributeError ('list' object has no attribute 'items'); it is a TypeError, as a field
    missing is, and from_json of such a text says the same."""
    with pytest.raises(TypeError, match=rf"^{cls.__name__}.from_dict takes a dict \(a JSON object\), not "
                                        rf"{type(value).__name__}$"):
        cls.from_dict(value)
    if cls is not FitConfig:  # (FitConfig.from_json reads a file)
        with pytest.raises(TypeError, match=r"from_dict takes a dict \(a JSON object\), not list$"):
            cls.from_json("[1, 2]")


def test_only_a_list_in_a_tuple_field_is_read_back_as_a_tuple():
    """from_dict turns a JSON list into a tuple for a tuple field only: any other value is kept as
    it was read (a string is not made a tuple of its characters), and a list in a field of
    another type stays a list."""
    cfg = ScoreConfig.from_dict({"prompt": "p", "paths": "ab", "out": "o.csv", "scores": ["mcm", "msp"]})
    assert cfg.paths == "ab" and cfg.scores == ["mcm", "msp"]
    assert ScoreConfig.from_dict({"prompt": "p", "paths": ["a", "b"], "out": "o.csv"}).paths == ("a", "b")


@pytest.mark.parametrize("name, shown", [("alpha", "--alpha 50.0"), ("beta", "--beta 20.0"), ("lam", "--lam 0.1"),
                                         ("T", "--T 200.0"), ("perturb", "--perturb zero"), ("sigma", "--sigma 0.1")])
def test_an_option_of_the_smot_loss_given_to_another_loss_is_refused_by_its_flag(name, shown):
    """Each option only the SMOT loss reads (the threshold draw's alpha and beta, lam, T, the
    perturbation and its sigma), given to a run of another loss, is one line naming its flag and
    value; given to the smot loss it is taken, and the other options go with any loss."""
    with pytest.raises(UserError) as e:
        check_smot_only(FitConfig(), "ce", "--loss", {"lr", name})
    assert str(e.value) == f"{shown}: only the smot loss uses it (this run's --loss is ce)"
    check_smot_only(FitConfig(), "smot", "--loss", {"lr", name})
    check_smot_only(FitConfig(), "ce", "--loss", {"lr", "epochs", "seed"})
