"""One-line error texts made of other libraries' exceptions."""

import torch

from clip_smot.common.errors import first_line


def test_first_line_adds_the_line_that_a_first_line_announces():
    """load_state_dict's first line is "Error(s) in loading state_dict for CLIP:": alone it said
    nothing ("could not load the weights (Error(s) in loading state_dict for CLIP:)")."""
    try:
        torch.nn.Linear(2, 2).load_state_dict({"weight": torch.zeros(2, 2)})
    except RuntimeError as e:
        assert first_line(e) == 'Error(s) in loading state_dict for Linear: Missing key(s) in state_dict: "bias".'
    assert first_line(ValueError("")) == "ValueError" and first_line(ValueError("a\nb")) == "a"
    assert first_line(ValueError("x" * 1000), limit=20) == "x" * 17 + "..."
    assert first_line(ValueError("x" * 1000)) == "x" * 297 + "..."  # (300 characters unless told)
    assert first_line(ValueError("Errors:\n first \nsecond")) == "Errors: first"  # (the next line only)


def test_first_line_skips_blank_lines_strips_and_keeps_a_line_of_the_limit():
    assert first_line(ValueError("\n  \n  the reason  \nmore")) == "the reason"
    assert first_line(ValueError("Error(s) in loading:")) == "Error(s) in loading:"  # (announces nothing after)
    assert first_line(ValueError("x" * 20), limit=20) == "x" * 20


def test_a_refused_weights_only_load_keeps_the_unpicklers_reason_only():
    """torch's refusal: advice to load with weights_only=False (which would run the file's code),
    then "WeightsUnpickler error: REASON. More advice": the line keeps REASON, at most 200
    characters, or says what the file holds where torch gives no reason."""
    import pickle

    from clip_smot.common.errors import load_error

    advice = "Weights only load failed. Re-running `torch.load` with `weights_only` set to `False` will likely succeed"
    e = pickle.UnpicklingError(f"{advice}\n\tWeightsUnpickler error: Unsupported global: GLOBAL os.system. Please use")
    assert load_error(e) == "UnpicklingError: not a weights-only file (Unsupported global: GLOBAL os.system)"
    e = pickle.UnpicklingError(f"{advice}\n\tWeightsUnpickler error: {'y' * 300}")
    assert load_error(e) == f"UnpicklingError: not a weights-only file ({'y' * 200})"
    assert load_error(pickle.UnpicklingError(advice)) == (
        "UnpicklingError: not a weights-only file (an object other than tensors and plain values)")
    assert load_error(EOFError("Ran out of input\nsecond")) == "EOFError: Ran out of input"


def test_a_torchscript_archive_refused_by_torch_load_is_named_without_torchs_advice(tmp_path):
    """A TorchScript archive given as --cam-model (or a checkpoint): torch.load(weights_only=True)
    refuses it with advice to load it with weights_only=False, which the line quoted."""
    import warnings

    import pytest

    from clip_smot.common.errors import load_error

    with warnings.catch_warnings():  # (torch.jit's deprecation)
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), str(tmp_path / "ts.pt"))
    with pytest.raises(RuntimeError) as refused, pytest.warns(UserWarning, match="looks like a TorchScript archive"):
        torch.load(tmp_path / "ts.pt", weights_only=True)  # (the warning: the CLI filters it, tests/test_cli.py)
    assert load_error(refused.value) == ("RuntimeError: a TorchScript archive (torch.jit.save's), not a file of "
                                         "tensors and plain values")


def test_one_line_escapes_every_control_and_line_separator():
    """C0 and C1 controls, DEL and U+2028/U+2029 (where str.splitlines breaks a line too) are
    written as \\uXXXX; the rest (é, a no-break space) is kept."""
    from clip_smot.common.errors import one_line

    text = "a\nb\x00c\x1bd\x7fe\x85f\x9fg\u2028h\u2029i é\u00a0j"
    assert one_line(text) == ("a\\u000ab\\u0000c\\u001bd\\u007fe\\u0085f\\u009fg\\u2028h\\u2029i é\u00a0j")
    assert len(one_line(text).splitlines()) == 1


def test_cut_keeps_text_up_to_the_limit_and_marks_a_longer_one():
    from clip_smot.common.errors import cut

    assert cut("abcde", 5) == "abcde" and cut("abcdef", 5) == "ab..." and cut("x" * 41) == "x" * 37 + "..."
