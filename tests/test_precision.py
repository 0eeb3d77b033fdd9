"""--precision auto picks bf16 only where the device computes it fast."""

from unittest import mock

import pytest
import torch

from device import fast_bf16, precision_context, resolve_precision
from errors import UserError


@pytest.mark.parametrize(
    "capabilities, expected",
    [({"avx512_bf16": True}, "bf16"), ({"amx_bf16": True}, "bf16"), ({"avx2": True, "avx512_f": True}, "fp32")],
)
def test_auto_precision_follows_the_cpus_bf16_support(capabilities, expected):
    with mock.patch.object(torch.cpu, "get_capabilities", return_value=capabilities):
        assert resolve_precision("auto", torch.device("cpu")) == expected
        assert fast_bf16(torch.device("cpu")) == (expected == "bf16")
        assert resolve_precision("fp32", torch.device("cpu")) == "fp32"  # asked for: kept
        assert resolve_precision("bf16", torch.device("cpu")) == "bf16"


def test_bf16_on_mps_is_refused_and_fp32_is_no_autocast():
    with pytest.raises(UserError, match="--precision bf16 is not supported on MPS"):
        resolve_precision("bf16", torch.device("mps"))
    with precision_context("fp32", torch.device("cpu")):
        assert not torch.is_autocast_enabled("cpu")
    with precision_context("bf16", torch.device("cpu")):
        assert torch.is_autocast_enabled("cpu")
