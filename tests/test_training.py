"""The training loop's pieces that the end-to-end runs cannot see on a CPU-only machine."""

import warnings

import torch

from training import Run, restore


def test_restore_moves_the_model_before_loading_the_optimiser_state():
    """On CUDA the Adam moments must land where the parameters are when step() runs; restoring
    first and moving after leaves them on the CPU. The "meta" device stands in for the GPU here
    (moving there makes new parameter objects, so the optimiser must be built after the move)."""
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.randn(4, 3)).sum().backward()
    optimizer.step()
    checkpoint = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": 1}

    resumed = torch.nn.Linear(3, 2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # copying CPU weights into meta ones is a no-op, and says so
        resumed_optimizer, step = restore(
            checkpoint, resumed, lambda m: torch.optim.AdamW(m.parameters()), Run(torch.device("meta"))
        )
    assert step == 1
    for p in resumed.parameters():
        p.grad = torch.zeros_like(p)
    resumed_optimizer.step()
    for p in resumed.parameters():
        assert p.device.type == "meta"
        for name in ("exp_avg", "exp_avg_sq"):
            state = resumed_optimizer.state[p][name]
            assert (state.device, state.dtype) == (p.device, p.dtype), name
