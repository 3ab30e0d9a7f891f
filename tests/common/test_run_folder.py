"""clip_smot.common.run_folder: the run folder that fit and train share (log, checkpoint, RNG, resume)."""

import json
import random
import re

import numpy as np
import pytest
import torch

from clip_smot.common import run_folder as rf
from clip_smot.common.errors import UserError


def _draws(gen):
    return torch.rand(3), np.random.rand(2), random.random(), torch.rand(2, generator=gen)


def test_rng_round_trip_through_a_weights_only_file_gives_the_same_draws(tmp_path):
    torch.manual_seed(11), np.random.seed(11), random.seed(11)
    gen = torch.Generator().manual_seed(5)
    torch.rand(1, generator=gen)  # one draw taken: the state is not the seed's
    torch.save({"rng": rf.capture_rng({"data_gen": gen})}, tmp_path / "state.pt")
    expected = _draws(gen)
    # independently: the named generator's next draws are those of seed 5 after one draw
    fresh = torch.Generator().manual_seed(5)
    torch.rand(1, generator=fresh)
    torch.testing.assert_close(expected[3], torch.rand(2, generator=fresh), rtol=0, atol=0)

    torch.manual_seed(99), np.random.seed(99), random.seed(99)
    gen.manual_seed(99)
    rf.restore_rng(torch.load(tmp_path / "state.pt", weights_only=True)["rng"], {"data_gen": gen})
    again = _draws(gen)
    torch.testing.assert_close(again[0], expected[0], rtol=0, atol=0)
    np.testing.assert_array_equal(again[1], expected[1])
    assert again[2] == expected[2]
    torch.testing.assert_close(again[3], expected[3], rtol=0, atol=0)


def test_a_numpy_state_at_a_position_outside_its_key_is_refused():
    """NumPy's set_state takes any position and its next draw reads key[pos] unchecked: a
    checkpoint saying 100,000,000 made that draw a segmentation fault, -1 or 625 read memory
    that is not the key. 0 and 624 (the next draw regenerates the key) are positions it writes."""
    saved = np.random.get_state()
    try:
        for pos in (0, 624):
            state = rf.capture_rng()
            state["numpy"] = (*state["numpy"][:2], pos, *state["numpy"][3:])
            rf.restore_rng(state)
            assert np.random.get_state()[2] == pos
        for pos in (-1, 625, 10**8, True, 10**30):
            state = rf.capture_rng()
            state["numpy"] = (*state["numpy"][:2], pos, *state["numpy"][3:])
            with pytest.raises(ValueError, match=rf"^NumPy's state is at position {pos}, not in \[0, 624\]$"):
                rf.restore_rng(state)
            assert np.random.get_state()[2] in (0, 624)  # (left as it was)
    finally:
        np.random.set_state(saved)


def test_the_older_fit_rng_layout_is_restored():
    """fit's checkpoints before the shared layout: torch_cpu, torch_cuda, data_gen, aug_gen, aug_device."""
    torch.manual_seed(3)
    data, aug = torch.Generator().manual_seed(1), torch.Generator().manual_seed(2)
    old = {"torch_cpu": torch.get_rng_state(), "torch_cuda": None, "data_gen": data.get_state(),
           "aug_gen": aug.get_state(), "aug_device": "cpu"}
    expected = torch.rand(2), torch.rand(2, generator=data), torch.rand(2, generator=aug)
    data.manual_seed(7), aug.manual_seed(7), torch.manual_seed(7)
    rf.restore_rng(old, {"data_gen": data, "aug_gen": aug})
    again = torch.rand(2), torch.rand(2, generator=data), torch.rand(2, generator=aug)
    for a, b in zip(again, expected):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_a_generator_state_of_another_device_is_one_line():
    state = rf.capture_rng({"aug_gen": torch.Generator()})
    state["devices"]["aug_gen"] = "cuda:0"
    with pytest.raises(UserError, match=r"^--resume x: written on cuda:0; resume it with --device cuda:0$"):
        rf.restore_rng(state, {"aug_gen": torch.Generator()}, "--resume x")


def test_a_run_written_on_more_gpus_than_this_machine_has_restores_the_first_ones(monkeypatch):
    """A train run written on two GPUs (torch.cuda.get_rng_state_all: two states) resumed on a
    machine with one: torch's set_rng_state_all set device 0 and then failed on device 1 (an
    IndexError from torch.cuda.default_generators). CUDA is faked: only the calls are recorded."""
    set_states = []

    def set_rng_state(new_state, device="cuda"):
        if device >= 1:  # (as torch.cuda.default_generators[device] on a one-GPU machine)
            raise IndexError("tuple index out of range")
        set_states.append((device, new_state.tolist()))

    for module in (torch.cuda, torch.cuda.random):
        monkeypatch.setattr(module, "set_rng_state", set_rng_state)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    state = rf.capture_rng()  # (this machine: no CUDA, so no "cuda" entry yet)
    state["cuda"] = [torch.tensor([1, 2], dtype=torch.uint8), torch.tensor([3, 4], dtype=torch.uint8)]
    rf.restore_rng(state)
    assert set_states == [(0, [1, 2])]


def test_a_checkpoint_is_written_atomically_with_its_format(tmp_path):
    path = tmp_path / "checkpoint.pt"
    rf.save_checkpoint(path, "clip-smot-train-checkpoint", {"epoch": 3, "w": torch.arange(4.0)})
    raw = torch.load(path, weights_only=True)  # (torch itself: what the file holds)
    assert raw["format"] == "clip-smot-train-checkpoint" and raw["epoch"] == 3
    torch.testing.assert_close(raw["w"], torch.tensor([0.0, 1.0, 2.0, 3.0]))
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]  # no temporary file left
    assert rf.read_checkpoint(path, "clip-smot-train-checkpoint")["epoch"] == 3


def test_a_checkpoint_larger_than_half_the_memory_is_not_loaded(tmp_path, monkeypatch):
    """torch.load reads a checkpoint whole, and a sparse file (holes, stored uncompressed, so no
    zip bomb) costs no disk: --resume and export loaded one of any size. One larger than half of
    the memory is refused unread (here a 4 MiB checkpoint on a machine of 4 MiB)."""
    import clip_smot.common.device as device

    rf.save_checkpoint(tmp_path / "c.pt", "clip-smot-fit-checkpoint", {"junk": torch.zeros(1 << 20)})
    monkeypatch.setattr(device, "physical_memory", lambda: 4 << 20)
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("the file was loaded"))
    with pytest.raises(rf.CheckpointError, match=r"^not a readable checkpoint \(the file is 0.0 GiB, more than half "
                                                 r"of this machine's 0.0 GiB; not loaded\)$"):
        rf.read_checkpoint(tmp_path / "c.pt", "clip-smot-fit-checkpoint")


def test_a_damaged_or_foreign_checkpoint_is_one_line(tmp_path):
    path = tmp_path / "checkpoint.pt"
    rf.save_checkpoint(path, "clip-smot-fit-checkpoint", {"epoch": 1})
    with pytest.raises(rf.CheckpointError, match=r"^not a clip-smot train checkpoint \(a clip-smot fit one\)$"):
        rf.read_checkpoint(path, "clip-smot-train-checkpoint")
    torch.save({"format": "something-else", "epoch": 1}, path)
    with pytest.raises(rf.CheckpointError, match=r"^not a clip-smot fit checkpoint$"):
        rf.read_checkpoint(path, "clip-smot-fit-checkpoint", legacy=True)
    torch.save({"epoch": 1}, path)  # no format: only where the track's older checkpoints had none
    with pytest.raises(rf.CheckpointError, match=r"^not a clip-smot fit checkpoint$"):
        rf.read_checkpoint(path, "clip-smot-fit-checkpoint")
    assert rf.read_checkpoint(path, "clip-smot-train-checkpoint", legacy=True) == {"epoch": 1}
    path.write_bytes(b"\x00garbage")
    with pytest.raises(rf.CheckpointError) as info:
        rf.read_checkpoint(path, "clip-smot-fit-checkpoint")
    assert "\n" not in str(info.value) and str(info.value).startswith("not a readable checkpoint (UnpicklingError: ")
    assert info.value.unreadable.startswith("UnpicklingError: ")


def test_a_checkpoint_load_error_is_a_failed_read_only_with_an_error_number(tmp_path, monkeypatch):
    """torch.load's OSError with an error number (EIO of a failing disk) is the read that failed,
    the file may be whole; an OSError without one (a library's words for bad data, as bz2's
    "Invalid data stream") is a file that cannot be read as a checkpoint."""
    path = tmp_path / "checkpoint.pt"
    rf.save_checkpoint(path, "clip-smot-fit-checkpoint", {"epoch": 1})
    for error in (OSError(5, "Input/output error"), OSError("Invalid data stream")):
        def fails(*args, error=error, **kwargs):
            raise error

        monkeypatch.setattr(rf.torch, "load", fails)
        with pytest.raises((UserError, rf.CheckpointError)) as info:
            rf.read_checkpoint(path, "clip-smot-fit-checkpoint")
        if error.errno is not None:
            assert str(info.value) == f"{path}: cannot be read (Input/output error)"
        else:
            assert type(info.value) is rf.CheckpointError
            assert info.value.unreadable == "OSError: Invalid data stream"


def test_a_checkpoint_whose_repeated_parts_expand_past_a_million_values_is_not_read(tmp_path):
    """A 2 KB checkpoint whose config held a list naming the list before it twice, 40 deep (a pickle
    keeps one copy of each: 2^40 values written out): export and fit --resume hung in json.dumps
    of the config, its memory growing, past a 10 s alarm (C code, which the alarm does not
    interrupt). Refused at once; so are a list that holds itself and lists nested past 64 deep.
    What the expansion counts, by hand: each container once per place it is named, and each value
    in it."""
    import time

    nested = [0]
    for _ in range(40):
        nested = [nested, nested]
    path = tmp_path / "checkpoint.pt"
    rf.save_checkpoint(path, "clip-smot-fit-checkpoint", {"epoch": 1, "config": {"lr": 0.1, "x": nested}})
    assert path.stat().st_size < 4096
    t0 = time.perf_counter()
    with pytest.raises(rf.CheckpointError) as info:
        rf.read_checkpoint(path, "clip-smot-fit-checkpoint")
    assert info.value.unreadable == "it holds more than 1,000,000 values once its repeated parts are written out"
    assert time.perf_counter() - t0 < 5
    itself = [1]
    itself.append(itself)
    rf.save_checkpoint(path, "clip-smot-fit-checkpoint", {"epoch": 1, "log": itself})
    with pytest.raises(rf.CheckpointError, match=r"\(it holds a list or dict that holds itself\)$"):
        rf.read_checkpoint(path, "clip-smot-fit-checkpoint")
    deep = [0]  # (json.dumps of the config: a RecursionError traceback from export and fit --resume)
    for _ in range(100):
        deep = [deep]
    rf.save_checkpoint(path, "clip-smot-fit-checkpoint", {"epoch": 1, "config": {"x": deep}})
    with pytest.raises(rf.CheckpointError, match=r"\(its lists and dicts nest 103 deep, more than 64\)$"):
        rf.read_checkpoint(path, "clip-smot-fit-checkpoint")
    shared = [1, 2]
    # the dict, its list a (itself, shared twice at 3, the tuple: itself, 3 and shared), its dict b (itself,
    # shared); 4 deep: the dict, a, the tuple, shared
    assert rf._extent({"a": [shared, shared, (3, shared)], "b": {"c": shared}}, 100) == (
        1 + (1 + 3 + 3 + (1 + 1 + 3)) + (1 + 3), 4)
    assert rf._extent(nested, 100)[0] > 100 and rf._extent(5, 100) == (1, 0)


def test_a_tensor_of_no_data_anywhere_in_a_checkpoint_is_named(tmp_path):
    """A tensor on the meta device (no data; torch.load keeps it there, map_location or not) in a
    checkpoint, at any depth (a seeded fuzz of fit --resume put one as ctx: Tensor.item() on it was
    a traceback): the checkpoint is not readable, and where the tensor lies is named."""
    path = tmp_path / "checkpoint.pt"
    meta = torch.empty(2, device="meta")
    for saved, where in (({"ctx": meta}, "ctx"), ({"optimizer": {"state": {0: {"momentum_buffer": meta}}}},
                                                  "optimizer/state/0/momentum_buffer"),
                         ({"log": [{"epoch": 1}, (1, meta)]}, "log/1/1"), (meta, "the file's object")):
        if isinstance(saved, dict):
            rf.save_checkpoint(path, "clip-smot-fit-checkpoint", saved)
        else:  # (a bare tensor: named before its missing format is)
            torch.save(saved, path)
        with pytest.raises(rf.CheckpointError) as info:
            rf.read_checkpoint(path, "clip-smot-fit-checkpoint")
        assert info.value.unreadable == f"{where} is a tensor of no data (on the meta device)", saved
    rf.save_checkpoint(path, "clip-smot-fit-checkpoint", {"ctx": torch.zeros(2), "log": [[[[torch.ones(1)]]]]})
    assert rf.read_checkpoint(path, "clip-smot-fit-checkpoint")["ctx"].device.type == "cpu"


def test_a_train_resume_of_a_fit_checkpoint_is_one_line(tmp_path):
    from clip_smot.resnet.train import TrainConfig, run_train

    rf.save_checkpoint(tmp_path / "checkpoint.pt", "clip-smot-fit-checkpoint", {"epoch": 1})
    with pytest.raises(UserError, match=r"^--resume: \S+ is not a clip-smot train checkpoint \(a clip-smot fit one\)$"):
        run_train(TrainConfig(out=str(tmp_path), device="cpu"), resume=True)


def test_the_log_is_appended_line_by_line(tmp_path):
    first = rf.log_record(1, 0.5, 0.1, 1.23456, images=8)
    assert first == {"epoch": 1, "loss": 0.5, "lr": 0.1, "seconds": 1.235, "images": 8}
    rf.append_log(tmp_path, first)
    text = (tmp_path / "log.jsonl").read_text()
    rf.append_log(tmp_path, rf.log_record(2, 0.25, 0.1, 2.0))
    after = (tmp_path / "log.jsonl").read_text()
    assert after.startswith(text) and after.count("\n") == 2  # the first line untouched
    assert [json.loads(line)["epoch"] for line in after.splitlines()] == [1, 2]
    rf.truncate_log(tmp_path / "log.jsonl", 1)  # a resume from the checkpoint of epoch 1
    assert (tmp_path / "log.jsonl").read_text() == text
    records = [{"epoch": 1, "loss": 1.0}, {"epoch": 2, "loss": 2.0}]
    rf.truncate_log(tmp_path / "log.jsonl", 2, records)  # a checkpoint's own copy restores a lost line
    assert (tmp_path / "log.jsonl").read_text() == '{"epoch": 1, "loss": 1.0}\n{"epoch": 2, "loss": 2.0}\n'


def test_one_resume_policy():
    saved = {"lr": 0.1, "seed": 3, "workers": 4, "out": "a"}
    wanted = {"lr": 0.1, "seed": 0, "workers": 0, "out": "b"}
    # seed not given: the saved 3; workers is run control: the current 0
    assert rf.resume_options(saved, wanted, {"lr"}, {"workers", "out"}, "a") == \
        {"lr": 0.1, "seed": 3, "workers": 0, "out": "b"}
    message = r"^--resume: --seed differs from the run saved in a; resume with the same flags$"
    with pytest.raises(UserError, match=message):
        rf.resume_options(saved, wanted, {"lr", "seed", "workers"}, {"workers", "out"}, "a")
    with pytest.raises(UserError, match=r"^--resume: --lr, --seed differ from the run saved in a; "):
        rf.resume_options(saved, {**wanted, "lr": 0.2}, {"lr", "seed"}, {"workers", "out"}, "a")


def test_the_finished_exit_and_the_non_finite_loss_are_one_line_each(tmp_path, capsys):
    assert not rf.finished(tmp_path, "fit", 2, 2, ["prompt.safetensors"])  # its output not written yet
    (tmp_path / "prompt.safetensors").write_bytes(b"x")
    assert not rf.finished(tmp_path, "fit", 1, 2, ["prompt.safetensors"])
    assert capsys.readouterr().err == ""
    assert rf.finished(tmp_path, "fit", 2, 2, ["prompt.safetensors"])
    assert capsys.readouterr().err == f"fit: the run in {tmp_path} has finished its 2 epochs; nothing to do " \
                                      "(nothing rewritten)\n"
    assert str(rf.non_finite_loss("train", float("nan"), 1, "c.pt", "lower --lr")) == \
        "train: non-finite training loss (nan) in epoch 2; the last good checkpoint c.pt (epoch 1) is kept; lower --lr " \
        "in a new run in another --out (a --resume goes on with the run's options)"
    assert "no checkpoint was written" in str(rf.non_finite_loss("fit", float("inf"), 0, "c.pt", "x"))


@pytest.mark.parametrize("result", ["model.safetensors", "prompt.safetensors"])
def test_a_new_run_is_refused_over_a_result_without_its_checkpoint(tmp_path, result):
    """A finished run whose checkpoint.pt was removed: a new run replaced its config.json and
    log.jsonl and left its result, which a --resume of the new run then took as its own ("finished;
    nothing to do"). Only the config and log of a run stopped before its first checkpoint are
    started over."""
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "log.jsonl").write_text("")
    other = ({"model.safetensors", "prompt.safetensors"} - {result}).pop()  # (not this command's result)
    (tmp_path / other).write_bytes(b"e.g. a --cam-model")
    assert rf.check_start(tmp_path, resume=False, dry_run=False, result=result) == tmp_path / "checkpoint.pt"
    (tmp_path / result).write_bytes(b"a result")
    with pytest.raises(UserError, match=rf"^--out {tmp_path}: already holds a run \({result}\); choose another --out$"):
        rf.check_start(tmp_path, resume=False, dry_run=False, result=result)
    assert rf.check_start(tmp_path, resume=False, dry_run=True, result=result) == tmp_path / "checkpoint.pt"  # (writes nothing)
    (tmp_path / "checkpoint.pt").write_bytes(b"state")
    with pytest.raises(UserError, match=r"\(checkpoint.pt\); pass --resume to continue it, or choose another --out$"):
        rf.check_start(tmp_path, resume=False, dry_run=False, result=result)


@pytest.mark.parametrize("result", ["model.safetensors", "prompt.safetensors"])
def test_a_resume_without_a_checkpoint_says_what_to_do(tmp_path, result):
    """--resume with no checkpoint: a run stopped before its first one is started without --resume
    (check_start lets that run start over), a finished one (its result there) is done."""
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(UserError, match=rf"^--resume: no checkpoint at {tmp_path / 'checkpoint.pt'}; run without "
                                        r"--resume to start the run$"):
        rf.check_start(tmp_path, resume=True, dry_run=False, result=result)
    assert rf.check_start(tmp_path, resume=False, dry_run=False, result=result) == tmp_path / "checkpoint.pt"
    (tmp_path / result).write_bytes(b"a result")
    with pytest.raises(UserError, match=rf"; its run finished \({result} is there\)$"):
        rf.check_start(tmp_path, resume=True, dry_run=False, result=result)


@pytest.mark.parametrize("command", ["fit", "train"])
def test_a_new_run_starts_over_only_its_own_stopped_run(tmp_path, command):
    """A new run replaced whatever config.json and log.jsonl --out held (an evaluation's record, a
    user's notes, the other command's stopped run), exit 0. It starts over a stopped run of its
    own command only: a config.json with the keys every such run's holds."""
    files = ("split.txt", "config.json", "log.jsonl", "checkpoint.pt", "prompt.safetensors")
    own = {"fit": {"shots": 16, "n_ctx": 16}, "train": {"arch": "resnet18", "stage": "base"}}

    other = own["train" if command == "fit" else "fit"]

    (tmp_path / "log.jsonl").write_text("my notes\n")
    with pytest.raises(UserError, match=rf"^--out {tmp_path}: its log.jsonl is not of a clip-smot {command} run "
                       r"stopped before its first checkpoint \(no config.json of one beside it\); the run would "
                       r"replace it; choose another --out$"):
        rf.check_new_run(tmp_path, command, files)
    evaluation = {"id_data": "val", "ood": {}, "scores": "mcm", "convention": "id"}
    # (a JSON list or string holding the key names is no config: "shots" in ["shots", "n_ctx"] is true)
    for config in (evaluation, other, [], "not json", list(own[command]), " ".join(own[command])):
        (tmp_path / "config.json").write_text(json.dumps(config) if config != "not json" else config)
        with pytest.raises(UserError, match=rf"^--out {tmp_path}: its config.json is not of a clip-smot {command} "
                           "run stopped before its first checkpoint; the run would replace it; choose another --out$"):
            rf.check_new_run(tmp_path, command, files)
    (tmp_path / "config.json").write_text(json.dumps({**own[command], "more": 1}))
    rf.check_new_run(tmp_path, command, files)  # (a stopped run of its own: started over)
    (tmp_path / "config.json").unlink()
    (tmp_path / "log.jsonl").unlink()
    (tmp_path / "notes.txt").write_text("other files are no run's")
    rf.check_new_run(tmp_path, command, files)


def test_an_optimizer_state_keeps_the_run_options_and_this_device_update():
    """What the update is (momentum, weight decay, nesterov, maximize) must be the run's; how it
    runs (fused: a CUDA run's choice) stays the resuming optimizer's."""
    w = torch.nn.Parameter(torch.ones(2))
    saved = torch.optim.SGD([w], lr=0.1, momentum=0.9, weight_decay=5e-4, fused=True)
    w.grad = torch.ones(2)
    saved.step()
    ours = torch.optim.SGD([w], lr=0.1, momentum=0.9, weight_decay=5e-4)
    rf.load_optimizer_state(ours, saved.state_dict(), "--resume c.pt")
    assert ours.param_groups[0]["fused"] is None and ours.param_groups[0]["momentum"] == 0.9
    assert torch.equal(ours.state[w]["momentum_buffer"], saved.state[w]["momentum_buffer"])
    other = torch.optim.SGD([w], lr=0.1, momentum=0.5, weight_decay=5e-4)
    with pytest.raises(UserError, match=r"^--resume c.pt: its optimizer state does not fit \(ValueError: momentum is "
                                        r"0.9, not the run's 0.5\)$"):
        rf.load_optimizer_state(other, saved.state_dict(), "--resume c.pt")


class _Foreign:  # (a class torch's weights-only unpickler does not allow)
    pass


def test_a_refused_pickle_gives_the_reason_not_torchs_advice_to_run_it(tmp_path):
    """torch's refusal began 'Weights only load failed ... Re-running torch.load with weights_only
    set to False will likely succeed': advice to run the file's code, quoted to the user as the
    reason. The line keeps the unpickler's own reason."""
    from clip_smot.clip.cam_network import load_cam_network

    path = tmp_path / "checkpoint.pt"
    path.write_text("garbage\n")
    with pytest.raises(rf.CheckpointError) as info:
        rf.read_checkpoint(path, "clip-smot-fit-checkpoint")
    assert str(info.value) == "not a readable checkpoint (UnpicklingError: not a weights-only file (Unsupported operand 103))"
    torch.save({"x": _Foreign()}, path)  # (no format: a fit checkpoint is named as such before it is read)
    with pytest.raises(UserError) as info:
        load_cam_network(str(path))
    assert str(info.value) == (f"--cam-model {path}: not a readable PyTorch state dict (UnpicklingError: not a "
                               f"weights-only file (Unsupported global: GLOBAL {__name__}._Foreign was not an allowed "
                               "global by default))")


def test_a_huge_log_is_read_up_to_its_limit(tmp_path, monkeypatch):
    """log.jsonl was read whole on --resume: a sparse file of gigabytes (no disk) took its size in
    memory, twice. The lines past MAX_LOG_BYTES are not read (no run writes that much)."""
    monkeypatch.setattr(rf, "MAX_LOG_BYTES", 64)
    path = tmp_path / "log.jsonl"
    path.write_text('{"epoch": 1}\n{"epoch": 2}\n' + "x" * 1000 + '\n{"epoch": 3}\n')
    rf.truncate_log(path, 3)
    assert path.read_text() == '{"epoch": 1}\n{"epoch": 2}\n'


def test_a_log_keeps_only_lines_with_a_whole_epoch_number_and_the_checkpoints_epochs(tmp_path):
    """A line that parses as JSON but is no record (a list, a number, a string), an epoch true
    (a bool is an int to Python), and a checkpoint's own copy holding more epochs than it vouches
    for: each is dropped; the first 2 epochs' lines stay."""
    path = tmp_path / "log.jsonl"
    path.write_text('[1]\n5\n"epoch"\n{"epoch": true}\n{"epoch": 1.0}\n{"epoch": 1}\n{"epoch": 2}\n{"epoch": 3}\n')
    rf.truncate_log(path, 2)
    assert path.read_text() == '{"epoch": 1}\n{"epoch": 2}\n'
    rf.truncate_log(path, 1, [{"epoch": 1, "loss": 0.5}, {"epoch": 2, "loss": 0.25}])
    assert path.read_text() == '{"epoch": 1, "loss": 0.5}\n'


def test_a_checkpoint_that_would_unpack_past_its_size_is_not_loaded(tmp_path, monkeypatch):
    """A checkpoint whose zip entries are deflated (torch.save stores them) unpacks to more than
    its file: refused before torch.load, which would allocate what the entries declare. Here
    with no slack, a 1 MiB tensor of zeros deflated to a few KiB."""
    import zipfile

    import clip_smot.common.file_kinds as file_kinds

    plain = tmp_path / "plain.pt"
    rf.save_checkpoint(plain, "clip-smot-train-checkpoint", {"w": torch.zeros(1 << 18)})
    path = tmp_path / "checkpoint.pt"
    with zipfile.ZipFile(plain) as src, zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info))
    assert torch.load(path, weights_only=True)["w"].shape == (1 << 18,)  # torch itself would load it
    monkeypatch.setattr(file_kinds, "ARCHIVE_SLACK", 0)
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("loaded"))
    with pytest.raises(rf.CheckpointError, match=r"^not a readable checkpoint \(its entries unpack to \d+ bytes, "):
        rf.read_checkpoint(path, "clip-smot-train-checkpoint")


def test_a_run_is_finished_only_when_every_output_is_written(tmp_path):
    """Killed between train's model.safetensors and its summary.json: not finished (the resume
    writes both again), not a 'nothing to do' over a missing summary."""
    (tmp_path / "model.safetensors").write_bytes(b"x")
    assert not rf.finished(tmp_path, "train", 2, 2, ("summary.json", "model.safetensors"), quiet=True)
    (tmp_path / "summary.json").write_text("{}")
    assert rf.finished(tmp_path, "train", 2, 2, ("summary.json", "model.safetensors"), quiet=True)


@pytest.mark.parametrize("lr", [float("nan"), float("inf"), "0.1"])
def test_an_optimizer_state_with_a_lr_that_is_no_finite_number_is_one_line(lr):
    w = torch.nn.Parameter(torch.ones(2))
    opt = torch.optim.SGD([w], lr=0.1, momentum=0.9)
    state = opt.state_dict()
    state["param_groups"][0]["lr"] = lr
    with pytest.raises(UserError, match=rf"^--resume c.pt: its optimizer state does not fit \(ValueError: lr is "
                                        rf"{repr(lr).replace('.', '[.]')}\)$"):
        rf.load_optimizer_state(opt, state, "--resume c.pt")
    assert opt.param_groups[0]["lr"] == 0.1  # nothing loaded


def test_an_older_fit_rng_layout_of_another_device_is_one_line():
    """The older layout named its augmentation generator's device in aug_device alone."""
    aug = torch.Generator()
    old = {"torch_cpu": torch.get_rng_state(), "torch_cuda": None, "aug_gen": aug.get_state(), "aug_device": "cuda:0"}
    with pytest.raises(UserError, match=r"^--resume x: written on cuda:0; resume it with --device cuda:0$"):
        rf.restore_rng(old, {"aug_gen": aug}, "--resume x")


def test_a_log_that_cannot_be_appended_is_one_line_naming_the_log(tmp_path):
    with pytest.raises(UserError, match=rf"^cannot write {tmp_path / 'gone' / 'log.jsonl'}: No such file or directory$"):
        rf.append_log(tmp_path / "gone", rf.log_record(1, 0.5, 0.1, 1.0))


def test_a_log_line_is_on_the_disk_before_the_checkpoint_that_vouches_for_it(tmp_path, monkeypatch):
    """log.jsonl's line was left in the page cache while the epoch's checkpoint, written next, was
    flushed: after a power loss the checkpoint held epoch N and the log stopped at N - 1, and a fit's
    --resume (which keeps the log's own lines) went on from N + 1 with N's line lost for good."""
    import os

    synced, fsync = [], os.fsync

    def recorded(fd):  # (which file, and how much of it is written when it is flushed)
        synced.append((os.fstat(fd).st_ino, os.fstat(fd).st_size))
        fsync(fd)

    monkeypatch.setattr(os, "fsync", recorded)
    rf.append_log(tmp_path, rf.log_record(1, 0.5, 0.1, 1.0))
    log = (tmp_path / "log.jsonl").stat()
    assert synced == [(log.st_ino, log.st_size)] and log.st_size > 0  # (the whole line written when flushed)


def test_a_log_line_that_does_not_fit_on_the_disk_is_not_left_half_written(tmp_path):
    """A full disk writes the part of a line that fits, then fails: fit and train stopped with
    'cannot write .../log.jsonl: No space left on device' and a log ending in '{"epo', which a
    reader of JSON lines (jq, pandas) fails on. The failed line is cut back whole. (A file size
    limit, RLIMIT_FSIZE, writes a part and fails as a full disk does.)"""
    import resource
    import signal

    log = tmp_path / "log.jsonl"
    log.write_text("x" * 4090 + "\n")
    limit, handler = resource.getrlimit(resource.RLIMIT_FSIZE), signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    try:
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, limit[1]))  # (5 bytes of the line fit)
        with pytest.raises(UserError, match=rf"^cannot write {log}: File too large$"):
            rf.append_log(tmp_path, rf.log_record(58, 0.5, 0.1, 1.0))
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, limit)
        signal.signal(signal.SIGXFSZ, handler)
    assert log.read_text() == "x" * 4090 + "\n"


def test_truncating_a_missing_or_damaged_log_keeps_the_whole_epoch_lines(tmp_path):
    """A --resume whose log.jsonl was removed starts an empty one; bytes that are not UTF-8 (a
    disk error, a line cut inside a character) and a line of epoch 0 (no epoch is 0: they
    count from 1) are dropped, not fatal."""
    path = tmp_path / "log.jsonl"
    rf.truncate_log(path, 3)
    assert path.read_bytes() == b""
    path.write_bytes(b'{"epoch": 0}\n{"epoch": 1}\n\xc3{"epoch": 2}\n{"epoch": 2}\n')
    rf.truncate_log(path, 2)
    assert path.read_bytes() == b'{"epoch": 1}\n{"epoch": 2}\n'


def test_a_refused_resume_names_the_flags_as_typed():
    with pytest.raises(UserError, match=r"^--resume: --batch-size, --cam-model differ from the run saved in a; "):
        rf.resume_options({"batch_size": 8, "cam_model": "m"}, {"batch_size": 16, "cam_model": "n"},
                          {"batch_size", "cam_model"}, (), "a")


def test_an_optimizer_state_of_other_groups_or_parameters_is_one_line_saying_so():
    """The counts are checked before torch's load_state_dict, whose own words name neither number."""
    a, b = torch.nn.Parameter(torch.ones(2)), torch.nn.Parameter(torch.ones(3))
    two_groups = torch.optim.SGD([{"params": [a]}, {"params": [b]}], lr=0.1).state_dict()
    two_params = torch.optim.SGD([a, b], lr=0.1).state_dict()
    with pytest.raises(UserError, match=r"^--resume c.pt: its optimizer state does not fit \(ValueError: 2 parameter "
                                        r"groups, not 1\)$"):
        rf.load_optimizer_state(torch.optim.SGD([a], lr=0.1), two_groups, "--resume c.pt")
    with pytest.raises(UserError, match=r"^--resume c.pt: its optimizer state does not fit \(ValueError: 2 parameters "
                                        r"in a group, not 1\)$"):
        rf.load_optimizer_state(torch.optim.SGD([a], lr=0.1), two_params, "--resume c.pt")


def test_an_optimizer_state_filed_under_an_id_no_group_holds_is_one_line():
    """torch keeps such a state aside, unused: the parameter's momentum was lost without a word."""
    w = torch.nn.Parameter(torch.ones(2))
    state = {"state": {"0": {"momentum_buffer": torch.ones(2)}},
             "param_groups": torch.optim.SGD([w], lr=0.1, momentum=0.9).state_dict()["param_groups"]}
    with pytest.raises(UserError, match=r"^--resume c.pt: its optimizer state does not fit \(ValueError: a state for "
                                        r"parameter '0', which no group holds\)$"):
        rf.load_optimizer_state(torch.optim.SGD([w], lr=0.1, momentum=0.9), state, "--resume c.pt")
def test_an_optimizer_state_that_lacks_a_buffer_is_one_line():
    """A parameter's state without its momentum_buffer (deleted from a checkpoint: a seeded fuzz)
    was loaded, and torch started that momentum again from nothing, exit 0; an empty state, which
    torch does not write, the same. Each is refused; states of the same keys load."""
    a, b = torch.nn.Parameter(torch.ones(2)), torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.SGD([a, b], lr=0.1, momentum=0.9)
    a.grad, b.grad = torch.ones(2), torch.ones(3)
    opt.step()
    rf.load_optimizer_state(torch.optim.SGD([a, b], lr=0.1, momentum=0.9), opt.state_dict(), "--resume c.pt")
    state = opt.state_dict()
    del state["state"][1]["momentum_buffer"]
    with pytest.raises(UserError, match=r"^--resume c.pt: its optimizer state does not fit \(ValueError: the state of "
                                        r"parameter 1 holds nothing, not \['momentum_buffer'\]\)$"):
        rf.load_optimizer_state(torch.optim.SGD([a, b], lr=0.1, momentum=0.9), state, "--resume c.pt")
    one = torch.optim.SGD([a], lr=0.1, momentum=0.9).state_dict()
    one["state"] = {0: {}}
    with pytest.raises(UserError, match=r"\(ValueError: the state of parameter 0 holds nothing, not a buffer\)$"):
        rf.load_optimizer_state(torch.optim.SGD([a], lr=0.1, momentum=0.9), one, "--resume c.pt")


def test_an_optimizer_state_that_lacks_a_parameters_entry_is_one_line():
    """One parameter's whole entry deleted from a checkpoint's optimizer state (a seeded fuzz of
    train --resume: ``optimizer/state/25`` deleted) while the other parameter keeps its
    momentum_buffer: torch loads it and starts that parameter's momentum again from nothing, exit 0,
    and the resumed run's weights are not the uninterrupted run's; as a buffer deleted from the
    entry (refused above), it is refused."""
    a, b = torch.nn.Parameter(torch.ones(2)), torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.SGD([a, b], lr=0.1, momentum=0.9)
    a.grad, b.grad = torch.ones(2), torch.ones(3)
    opt.step()
    state = opt.state_dict()
    assert sorted(state["state"]) == [0, 1]  # (torch wrote an entry for each parameter it stepped)
    del state["state"][1]
    with pytest.raises(UserError, match=r"^--resume c.pt: its optimizer state does not fit \(ValueError: .*\b1\b"):
        rf.load_optimizer_state(torch.optim.SGD([a, b], lr=0.1, momentum=0.9), state, "--resume c.pt")


def test_a_momentum_buffer_of_none_in_a_momentum_run_is_one_line():
    """A checkpoint of SGD with momentum 0.9 whose momentum_buffer of one parameter is None (a
    seeded fuzz of train --resume: ``optimizer/state/3/momentum_buffer`` replaced by None): torch
    takes None for no buffer and starts that momentum again from nothing, exit 0, and the resumed
    weights are not the uninterrupted run's. None is SGD's buffer without momentum only
    (test_an_optimizer_state_of_none_is_taken_as_no_state): here it is refused."""
    a, b = torch.nn.Parameter(torch.ones(2)), torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.SGD([a, b], lr=0.1, momentum=0.9)
    a.grad, b.grad = torch.ones(2), torch.ones(3)
    opt.step()
    state = opt.state_dict()
    state["state"][1]["momentum_buffer"] = None
    with pytest.raises(UserError, match=r"^--resume c.pt: its optimizer state does not fit \(ValueError: "):
        rf.load_optimizer_state(torch.optim.SGD([a, b], lr=0.1, momentum=0.9), state, "--resume c.pt")


def test_a_parameter_group_that_is_a_tensor_is_one_line_without_torchs_warning():
    """A checkpoint whose optimizer's parameter group is a tensor (a seeded fuzz of fit --resume:
    ``optimizer/param_groups/0`` replaced by tensor([0, 0, 0])): indexing it with "params" made
    torch warn "Using a non-tuple sequence for multidimensional indexing is deprecated" (two lines
    of torch's on stderr, which clip-smot's filters do not hide) before the refusal. Refused with
    no warning."""
    import warnings

    w = torch.nn.Parameter(torch.ones(2))
    state = torch.optim.SGD([w], lr=0.1, momentum=0.9).state_dict()
    state["param_groups"] = [torch.tensor([0, 0, 0])]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")  # (each warning recorded: on the command line it prints on stderr)
        with pytest.raises(UserError, match=r"^--resume c.pt: its optimizer state does not fit "):
            rf.load_optimizer_state(torch.optim.SGD([w], lr=0.1, momentum=0.9), state, "--resume c.pt")
    assert [str(w.message) for w in caught] == []


def test_an_optimizer_step_count_is_a_number_or_a_0_dim_tensor():
    """Adam's 'step' is a number or a 0-dim tensor; one of another shape is refused as any other
    per-parameter tensor of the wrong shape would be."""
    w = torch.nn.Parameter(torch.ones(2))
    for step in (3, 3.0, torch.tensor(3.0)):
        opt = torch.optim.Adam([w], lr=0.1)
        w.grad = torch.ones(2)
        opt.step()
        state = opt.state_dict()
        state["state"][0]["step"] = step
        rf.load_optimizer_state(torch.optim.Adam([w], lr=0.1), state, "--resume c.pt")
    state["state"][0]["step"] = torch.tensor([3.0, 3.0, 3.0])
    with pytest.raises(UserError, match=r"^--resume c.pt: its optimizer state does not fit \(ValueError: step has "
                                        r"shape \[3\], not \[2\]\)$"):
        rf.load_optimizer_state(torch.optim.Adam([w], lr=0.1), state, "--resume c.pt")


def test_a_peek_at_a_checkpoint_is_its_dict_or_none_and_never_an_error(tmp_path):
    """peek_checkpoint (the Ctrl-C line's epochs, reproduce's comparison of a stage's options):
    a dict's values as saved; None for a list, a pickle of other objects, bytes that are no
    checkpoint and no file at all."""
    import argparse

    path = tmp_path / rf.CHECKPOINT
    torch.save({"epoch": 2, "config": {"epochs": 5, "lr": 0.5}, "ctx": torch.arange(4.0)}, path)
    saved = rf.peek_checkpoint(path)
    assert saved["epoch"] == 2 and saved["config"] == {"epochs": 5, "lr": 0.5}
    assert saved["ctx"].tolist() == [0.0, 1.0, 2.0, 3.0]
    for value in ([1, 2], {"args": argparse.Namespace(lr=1.0)}):
        torch.save(value, path)
        assert rf.peek_checkpoint(path) is None, value
    path.write_bytes(b"not a checkpoint")
    assert rf.peek_checkpoint(path) is None
    assert rf.peek_checkpoint(tmp_path / "missing.pt") is None


def test_a_non_dict_checkpoint_or_format_is_refused_even_where_no_format_is_allowed(tmp_path):
    """legacy accepts a dict without a format key; a list (in which "format" is not) or a dict
    whose format is no string (a list: no key of a dict) is no checkpoint of the track."""
    path = tmp_path / "checkpoint.pt"
    torch.save([1, 2], path)
    with pytest.raises(rf.CheckpointError, match=r"^not a clip-smot train checkpoint$"):
        rf.read_checkpoint(path, "clip-smot-train-checkpoint", legacy=True)
    torch.save({"format": ["clip-smot-fit-checkpoint"], "epoch": 1}, path)
    with pytest.raises(rf.CheckpointError, match=r"^not a clip-smot train checkpoint$"):
        rf.read_checkpoint(path, "clip-smot-train-checkpoint")


def test_a_damaged_rng_state_is_refused_not_partly_restored():
    """A state without torch's generator, a NumPy key that is no tensor of 624 words, a position
    that is no whole number: each raises (the caller names the file) rather than resuming with
    the current state in its place."""
    saved = np.random.get_state()
    try:
        state = rf.capture_rng()
        del state["torch"]
        with pytest.raises(KeyError):
            rf.restore_rng(state)
        for keys, said in ((torch.zeros(623, dtype=torch.int64), "623"), (list(range(624)), "no")):
            state = rf.capture_rng()
            state["numpy"] = (state["numpy"][0], keys, *state["numpy"][2:])
            with pytest.raises(ValueError, match=rf"^NumPy's state holds {said} keys, not 624$"):
                rf.restore_rng(state)
        state = rf.capture_rng()
        state["numpy"] = (*state["numpy"][:2], 3.0, *state["numpy"][3:])
        with pytest.raises(ValueError, match=r"^NumPy's state is at position 3.0, not in \[0, 624\]$"):
            rf.restore_rng(state)
    finally:
        np.random.set_state(saved)


def test_a_state_of_the_shared_layout_with_an_aug_device_key_is_read_as_the_shared_layout():
    """The older fit layout is one with aug_device and no devices: a state with both restores
    NumPy's generator too."""
    saved = np.random.get_state()
    try:
        np.random.seed(4)
        state = {**rf.capture_rng({"aug_gen": torch.Generator()}), "aug_device": "cpu"}
        expected = np.random.rand(3)
        np.random.seed(5)
        rf.restore_rng(state, {"aug_gen": torch.Generator()})
        np.testing.assert_array_equal(np.random.rand(3), expected)
    finally:
        np.random.set_state(saved)


def test_cuda_generators_are_set_only_where_cuda_is_available_and_the_state_holds_them(monkeypatch):
    """A CPU machine resumes a CUDA run's checkpoint (its cuda states unused); a CUDA machine
    resumes a CPU run's (no cuda states: nothing to set)."""
    state = {k: v for k, v in rf.capture_rng().items() if k != "cuda"}
    with_cuda = {**state, "cuda": [torch.zeros(816, dtype=torch.uint8)]}
    set_calls = []
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda s, device: set_calls.append((s, device)))
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    cases = ((False, with_cuda, []), (True, state, []), (True, with_cuda, [(with_cuda["cuda"][0], 0)]))
    for available, given, expected in cases:
        monkeypatch.setattr(torch.cuda, "is_available", lambda a=available: a)
        set_calls.clear()
        rf.restore_rng(given)
        assert set_calls == expected


@pytest.mark.filterwarnings("ignore:The PyTorch API of nested tensors:UserWarning")
def test_only_a_dense_tensor_with_storage_for_each_value_holds_its_values():
    assert rf.holds_its_values(torch.ones(4))
    assert rf.holds_its_values(torch.ones(8)[2:6])  # (a view into a larger storage)
    assert not rf.holds_its_values(torch.tensor(1.0).expand(4))  # 4 bytes for 4 float32 values
    assert not rf.holds_its_values(torch.ones(4).to_sparse())
    assert not rf.holds_its_values(torch.nested.nested_tensor([torch.ones(2), torch.ones(3)]))


def test_an_optimizer_state_tensor_must_be_a_finite_float_one_of_its_own_values():
    """A non-step state that is a number, an integer tensor, a repeated (zero-stride) tensor or a
    NaN one is refused; a step that is neither a number nor a 0-dim tensor is refused as such."""
    w = torch.nn.Parameter(torch.ones(2))
    groups = torch.optim.SGD([w], lr=0.1, momentum=0.9).state_dict()["param_groups"]
    cases = ((0.5, r"momentum_buffer is a float, not a tensor"),
             (torch.ones(2, dtype=torch.int64), r"momentum_buffer is not a finite float tensor with a value of its own "
                                                r"at each position"),
             (torch.tensor(1.0).expand(2), r"momentum_buffer is not a finite"),
             (torch.tensor([1.0, float("nan")]), r"momentum_buffer is not a finite"))
    for value, said in cases:
        state = {"state": {0: {"momentum_buffer": value}}, "param_groups": groups}
        with pytest.raises(UserError, match=rf"^--resume c.pt: its optimizer state does not fit \(ValueError: {said}"):
            rf.load_optimizer_state(torch.optim.SGD([w], lr=0.1, momentum=0.9), state, "--resume c.pt")
    adam = torch.optim.Adam([w], lr=0.1)
    w.grad = torch.ones(2)
    adam.step()
    state = adam.state_dict()
    state["state"][0]["step"] = "3"
    with pytest.raises(UserError, match=r"^--resume c.pt: its optimizer state does not fit \(ValueError: step is a str, "
                                        r"not a tensor\)$"):
        rf.load_optimizer_state(torch.optim.Adam([w], lr=0.1), state, "--resume c.pt")


def test_the_config_is_written_to_the_run_folder_and_explicit_fields_are_those_off_their_default(tmp_path):
    from dataclasses import dataclass

    rf.write_config(tmp_path, {"b": 1, "a": [2, 3]})
    assert json.loads((tmp_path / "config.json").read_text()) == {"a": [2, 3], "b": 1}

    @dataclass
    class Cfg:
        lr: float = 0.1
        seed: int = 0
        out: str = "runs"

    assert rf.explicit_fields(Cfg()) == set()
    assert rf.explicit_fields(Cfg(seed=3, out="runs")) == {"seed"}


def test_a_config_json_value_that_reads_like_the_checkpoints_is_shown_as_json(tmp_path):
    """A config.json edited to hold the text "0.05" where the checkpoint holds the number 0.05 was
    refused as "--lr: 0.05 in the checkpoint, 0.05 in config.json": the two are shown as JSON then."""
    (tmp_path / "config.json").write_text(json.dumps({"lr": "0.05", "epochs": 3, "method": "ce"}))
    with pytest.raises(UserError, match=re.escape('(--lr: 0.05 in the checkpoint, "0.05" in config.json); was it')):
        rf.check_config_beside(tmp_path, {"lr": 0.05, "epochs": 3, "method": "ce"}, ["lr", "epochs", "method"], "ckpt")
    with pytest.raises(UserError, match=re.escape("(--epochs: 2 in the checkpoint, 3 in config.json; --method: smot in "
                                                  "the checkpoint, ce in config.json)")):  # (text as it is, else)
        rf.check_config_beside(tmp_path, {"lr": "0.05", "epochs": 2, "method": "smot"}, ["epochs", "method"], "ckpt")


def test_a_log_line_interrupted_by_ctrl_c_is_cut_back_and_the_interrupt_goes_on(tmp_path, monkeypatch):
    """Ctrl-C while a line is flushed to the disk: the line is cut back (the log keeps its whole
    lines) and the KeyboardInterrupt goes on as it came, not turned into a UserError."""
    import os

    log = tmp_path / "log.jsonl"
    log.write_text('{"epoch": 1}\n')

    def interrupted(fd):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "fsync", interrupted)
    with pytest.raises(KeyboardInterrupt):
        rf.append_log(tmp_path, rf.log_record(2, 0.5, 0.1, 1.0))
    assert log.read_text() == '{"epoch": 1}\n'


def test_a_log_that_cannot_be_read_for_truncating_is_one_line_naming_it(tmp_path, monkeypatch):
    log = tmp_path / "log.jsonl"
    log.write_text('{"epoch": 1}\n')

    def refused(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(rf, "open", refused, raising=False)  # (the module's open: root reads any file)
    with pytest.raises(UserError, match=rf"^cannot read {re.escape(str(log))}: Permission denied$"):
        rf.truncate_log(log, 1)
    assert log.read_text() == '{"epoch": 1}\n'


def test_a_config_json_that_is_no_object_is_no_record_to_compare_a_checkpoint_with(tmp_path):
    """config.json beside the checkpoint holding a list (edited, or another tool's) records no
    options: nothing is compared (the checkpoint's own options resume), as with no config.json."""
    for text in ("[1, 2]", '["lr"]', '"lr"'):  # (no object, even where "lr" is in it)
        (tmp_path / "config.json").write_text(text)
        rf.check_config_beside(tmp_path, {"lr": 0.05}, ["lr"], "ckpt")
    (tmp_path / "config.json").write_text('{"lr": 0.1}')
    with pytest.raises(UserError, match=r"^ckpt: not a checkpoint of the run that "):
        rf.check_config_beside(tmp_path, {"lr": 0.05}, ["lr"], "ckpt")


def test_an_optimizer_state_of_none_is_taken_as_no_state():
    """SGD without momentum keeps a momentum_buffer of None: a state the checks let through."""
    w = torch.nn.Parameter(torch.ones(2))
    state = torch.optim.SGD([w], lr=0.1).state_dict()
    state["state"] = {0: {"momentum_buffer": None}}
    opt = torch.optim.SGD([w], lr=0.1)
    rf.load_optimizer_state(opt, state, "--resume c.pt")
    assert opt.state_dict()["state"] == {0: {"momentum_buffer": None}}
