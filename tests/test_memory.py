"""The memory estimates behind the refusals before allocating (memory.py) count what the models hold."""

import pytest

from config import DallEConfig, DVAEConfig
from dall_e import DallE
from dvae import DiscreteVAE
from errors import UserError
from memory import check_memory, dall_e_parameters, dvae_parameters


@pytest.mark.parametrize(
    "dall_e, dvae",
    [
        (DallEConfig(), DVAEConfig()),
        (DallEConfig(n_layer=2, n_head=2, n_embd=16, text_length=5), DVAEConfig(grid_size=4)),
    ],
)
def test_the_parameter_counts_are_the_models(dall_e, dvae):
    assert dall_e_parameters(dall_e, dvae, 30) == sum(p.numel() for p in DallE(dall_e, dvae, 30).parameters())
    assert dvae_parameters(dvae) == sum(p.numel() for p in DiscreteVAE(dvae).parameters())


def test_a_codebook_of_a_billion_codes_is_counted_without_allocating_it():
    assert dvae_parameters(DVAEConfig(codebook_size=10**9)) > 64 * 10**9


def test_a_request_beyond_memory_is_one_line_with_the_estimate():
    with pytest.raises(UserError, match=r"would need about 1,024.0 GiB of memory, more than the .* GiB free; do less"):
        check_memory(2**40, "this", "do less")
    check_memory(2**20, "this", "do less")
