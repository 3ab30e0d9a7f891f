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
