"""Where the work runs and in what precision: the device, and bf16 autocast where it pays.

    --device auto       cuda, then mps, then cpu
    --precision auto    bf16 autocast where the device computes bf16 fast (a CUDA GPU with bf16, a
                        CPU with AVX-512 BF16 or AMX), else float32

Under autocast, matmuls and convolutions run in bf16 while weights stay float32; the models
compute their losses and softmaxes in float32 themselves.
"""

import contextlib

import torch

from errors import UserError

PRECISIONS = ("auto", "fp32", "bf16")


def pick_device(name):
    """--device -> torch.device, or one line saying why it cannot be had here."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name not in ("cpu", "cuda", "mps") and not name.startswith("cuda:"):
        raise UserError(f"unknown --device '{name}'; use auto, cpu, cuda, cuda:N or mps")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {name} asked for, but this machine has no CUDA GPU; use --device cpu")
    if name == "mps" and not torch.backends.mps.is_available():
        raise UserError("--device mps asked for, but MPS is not available here; use --device cpu")
    return torch.device(name)


def fast_bf16(device):
    """Whether bf16 matmuls beat float32 here: CUDA with bf16 support, or a CPU with AVX-512 BF16 or AMX."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        capabilities = torch.cpu.get_capabilities()
        return bool(capabilities.get("avx512_bf16") or capabilities.get("amx_bf16"))
    return False


def resolve_precision(name, device):
    """--precision -> "bf16" or "fp32" for this device."""
    if name == "auto":
        return "bf16" if fast_bf16(device) else "fp32"
    if name == "bf16" and device.type == "mps":
        raise UserError("--precision bf16 is not supported on MPS here; use --precision fp32")
    return name


def precision_context(precision, device):
    """bf16 autocast (matmuls and convolutions in bf16, losses and softmax in float32) or nothing."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)
