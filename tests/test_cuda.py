"""The CUDA path, where there is a GPU (skipped elsewhere): both trainers with and without bf16,
cached and uncached sampling, and a checkpoint written on CUDA used on the CPU.

gpu_check.sh runs these, the benchmark and the default trainings on a GPU machine in a few minutes.
"""

import shutil

import pytest
import torch

from checkpoints import dall_e_from_checkpoint, load_checkpoint
from conftest import run_script

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU here")


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_both_trainers_run_on_cuda_and_their_checkpoint_samples_on_cpu(tmp_path, mnist_dir, tiny_config, precision):
    common = ["--config_path", tiny_config, "--data_dir", mnist_dir, "--device", "cuda", "--precision", precision]
    dvae = run_script("train_dvae.py", *common, "--output_dir", tmp_path / "dvae")
    assert dvae.returncode == 0, dvae.stderr[-3000:]
    assert f"precision {precision}" in dvae.stdout
    dall_e = run_script(
        "train_mnist.py",
        *common,
        "--output_dir",
        tmp_path / "dall_e",
        "--dvae_checkpoint",
        tmp_path / "dvae" / "latest.pt",
    )
    assert dall_e.returncode == 0, dall_e.stderr[-3000:]
    generated = run_script(
        "generate_mnist.py", "--dall_e_checkpoint", tmp_path / "dall_e" / "latest.pt", "--device", "cpu",
        "--prompt", "7", "--output_dir", tmp_path / "samples",
    )  # fmt: skip
    assert generated.returncode == 0, generated.stderr[-3000:]


def test_cached_and_uncached_sampling_agree_on_cuda(trained):
    model, _, tokenizer = dall_e_from_checkpoint(load_checkpoint(trained["dall_e"] / "latest.pt", "dall_e"))
    model = model.cuda()
    text = torch.tensor([tokenizer.encode(p) for p in ["7", "three", "the digit one"]], device="cuda")
    cached = model.generate(text, generator=torch.Generator("cuda").manual_seed(0))
    uncached = model.generate(text, generator=torch.Generator("cuda").manual_seed(0), use_cache=False)
    assert torch.equal(cached, uncached)
    guided = model.generate(text, guidance=2.0, generator=torch.Generator("cuda").manual_seed(0))
    assert guided.shape == cached.shape


def test_both_trainers_resume_on_cuda(tmp_path, mnist_dir, tiny_config):
    """Adam's moments (and the EMA copy) must be restored onto the GPU, where step() finds them."""
    common = ["--config_path", tiny_config, "--data_dir", mnist_dir, "--device", "cuda"]
    dvae, dall_e = tmp_path / "dvae", tmp_path / "dall_e"
    assert run_script("train_dvae.py", *common, "--output_dir", dvae).returncode == 0
    shutil.copy(dvae / "dvae-3.pt", dvae / "latest.pt")  # back to step 3 of 6
    resumed = run_script("train_dvae.py", *common, "--output_dir", dvae, "--resume")
    assert resumed.returncode == 0 and "resuming at step 3" in resumed.stdout, resumed.stderr[-3000:]
    ema = ["--set", "train_dall_e.ema_decay=0.5"]
    first = run_script("train_mnist.py", *common, *ema, "--output_dir", dall_e, "--dvae_checkpoint", dvae / "latest.pt")
    assert first.returncode == 0, first.stderr[-3000:]
    shutil.copy(dall_e / "dall_e-3.pt", dall_e / "latest.pt")
    resumed = run_script("train_mnist.py", *common, "--output_dir", dall_e, "--resume")
    assert resumed.returncode == 0 and "resuming at step 3" in resumed.stdout, resumed.stderr[-3000:]
