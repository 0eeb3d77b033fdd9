import pytest
import torch

from config import DallEConfig
from transformer import MASK_KINDS, Transformer, attention_mask, layer_mask_kinds, mask_density


def brute_force_mask(kind, text_length, grid_size, kernel):
    """Appendix B.1 in words, one pair at a time.

    Text tokens attend causally to text. Image tokens attend to every text token and, among
    image tokens, only to earlier ones (or themselves) that the layer's pattern allows:
    row: one of the grid_size tokens just before it; column: one in its column;
    conv: one inside the kernel x kernel window around it.
    """
    n = text_length + grid_size * grid_size
    mask = torch.zeros(n, n, dtype=torch.bool)
    for i in range(n):
        for j in range(n):
            if i < text_length:
                mask[i, j] = j <= i
            elif j < text_length:
                mask[i, j] = True
            else:
                q, k = i - text_length, j - text_length
                (qr, qc), (kr, kc) = divmod(q, grid_size), divmod(k, grid_size)
                if k > q:
                    continue
                if kind == "row":
                    mask[i, j] = q - k <= grid_size
                elif kind == "column":
                    mask[i, j] = qc == kc
                else:
                    mask[i, j] = abs(qr - kr) <= kernel // 2 and abs(qc - kc) <= kernel // 2
    return mask


@pytest.mark.parametrize("kind", ["row", "column", "conv"])
@pytest.mark.parametrize("text_length, grid_size, kernel", [(3, 4, 3), (2, 5, 5)])
def test_masks_match_the_papers_definition(kind, text_length, grid_size, kernel):
    assert torch.equal(attention_mask(kind, text_length, grid_size, kernel), brute_force_mask(kind, text_length, grid_size, kernel))


def test_layer_assignment_follows_the_paper():
    assert layer_mask_kinds(4) == ["row", "column", "row", "conv"]
    kinds = layer_mask_kinds(64)
    assert kinds[-1] == "conv"
    assert [i + 1 for i, k in enumerate(kinds) if k == "column"] == list(range(2, 64, 4))


def test_mask_densities_on_the_8x8_grid():
    assert mask_density("conv", 8, 5) < mask_density("conv", 8, 11) < 1
    assert 0 < mask_density("column", 8, 5) < mask_density("row", 8, 5) < 0.5


def small_transformer():
    torch.manual_seed(0)
    config = DallEConfig(text_length=3, n_layer=4, n_head=2, n_embd=16, conv_kernel=3)
    return Transformer(config, grid_size=4).eval()


def test_changing_token_j_leaves_earlier_outputs_unchanged():
    model = small_transformer()
    x = torch.randn(2, model.max_length, 16)
    before = model(x)
    for j in (1, 3, 10, model.max_length - 1):
        changed = x.clone()
        changed[:, j] += torch.randn(16)
        after = model(changed)
        assert torch.allclose(before[:, :j], after[:, :j], atol=1e-6)
        assert not torch.allclose(before[:, j], after[:, j], atol=1e-4)


def test_kv_cache_matches_full_forward():
    model = small_transformer()
    x = torch.randn(2, model.max_length, 16)
    full = model(x)
    cache = model.new_cache(2, x.device, x.dtype)
    outputs = [model(x[:, :3], 0, cache)]  # the prompt in one go, then one position at a time
    for position in range(3, model.max_length):
        outputs.append(model(x[:, position : position + 1], position, cache))
    assert torch.allclose(torch.cat(outputs, dim=1), full, atol=1e-5)


def test_sampling_reads_only_the_keys_row_and_column_masks_allow():
    model = small_transformer()  # text 3, grid 4: layers row, column, row, conv
    row, column = MASK_KINDS.index("row"), MASK_KINDS.index("column")
    assert set(model.sparse_keys) == {row, column}
    last = model.max_length - 1
    assert model.sparse_keys[row][last].tolist() == [0, 1, 2] + list(range(last - 4, last + 1))  # prompt + one row's worth
    assert model.sparse_keys[column][last].tolist() == [0, 1, 2] + list(range(3 + 3, last + 1, 4))  # prompt + its column
