import pytest
import torch

from config import DallEConfig
from transformer import MASK_KINDS, Transformer, attention_mask, layer_mask_kinds, mask_density


def readable_cells(kind, q, grid_size, kernel):
    """The module docstring in words, one cell at a time: the image cells that input cell q may read.

    q predicts p = q + 1. Row: q and the grid_size cells before it. Column: q and the cells above q
    in its column. Conv: q + dr * G + dc in raster order for |dr|, |dc| <= kernel // 2, causal.
    """
    half = kernel // 2
    cells = set()
    for k in range(q + 1):  # causal: nothing after the input cell
        if kind == "row" and q - k <= grid_size:
            cells.add(k)
        if kind == "column" and k % grid_size == q % grid_size:
            cells.add(k)
    if kind == "conv":
        for dr in range(-half, half + 1):
            for dc in range(-half, half + 1):
                if 0 <= q + dr * grid_size + dc <= q:
                    cells.add(q + dr * grid_size + dc)
    return cells


def brute_force_mask(kind, text_length, grid_size, kernel):
    """Text attends causally to text; image tokens read every text token and their readable cells."""
    n = text_length + grid_size * grid_size
    mask = torch.zeros(n, n, dtype=torch.bool)
    for i in range(n):
        if i < text_length:
            mask[i, : i + 1] = True
            continue
        mask[i, :text_length] = True
        for k in readable_cells(kind, i - text_length, grid_size, kernel):
            mask[i, text_length + k] = True
    return mask


@pytest.mark.parametrize("kind", ["row", "column", "conv"])
@pytest.mark.parametrize(
    "text_length, grid_size, kernel", [(3, 4, 3), (2, 5, 5), (2, 8, 5), (2, 8, 11), (11, 16, 11)]
)  # 16: scenes
def test_masks_match_the_docstring_cell_by_cell(kind, text_length, grid_size, kernel):
    expected = brute_force_mask(kind, text_length, grid_size, kernel)
    assert torch.equal(attention_mask(kind, text_length, grid_size, kernel), expected)


@pytest.mark.parametrize("kernel", [3, 5, 11])
def test_which_layers_read_the_cell_above_the_predicted_one(kernel):
    """On the 8x8 grid, for every predicted cell p below the first row, is cell p - 8 readable?"""
    grid, text = 8, 2

    def reads_above(kind):
        mask = attention_mask(kind, text, grid, kernel)
        return [bool(mask[text + p - 1, text + p - grid]) for p in range(grid, grid * grid)]

    assert all(reads_above("row")) and all(reads_above("conv"))
    assert not any(reads_above("column"))  # the paper's column layer reads the column to the left
    column = attention_mask("column", text, grid, kernel)
    for p in range(grid, grid * grid):  # ... that is, the input cell's column
        read = {k for k in range(grid * grid) if column[text + p - 1, text + k]}
        assert {k % grid for k in read} == {(p - 1) % grid}


def test_layer_assignment_follows_the_paper():
    assert layer_mask_kinds(4) == ["row", "column", "row", "conv"]
    kinds = layer_mask_kinds(64)
    assert kinds[-1] == "conv"
    assert [i + 1 for i, k in enumerate(kinds) if k == "column"] == list(range(2, 64, 4))


def test_mask_densities_on_the_8x8_grid_are_the_readmes():
    """Exact counts, as README quotes them: row 9 cells (fewer at the start) of 2,080 causal pairs, ..."""
    pairs = 64 * 65 // 2
    assert mask_density("row", 8, 11) == (45 + 55 * 9) / pairs  # q + 1 cells for q < 9, then 9
    assert mask_density("column", 8, 11) == sum(q // 8 + 1 for q in range(64)) / pairs
    assert mask_density("conv", 8, 11) == (sum(range(1, 47)) + 18 * 46) / pairs  # every cell within 45 in raster order
    assert round(mask_density("row", 8, 11), 2) == 0.26 and round(mask_density("column", 8, 11), 2) == 0.14
    assert round(mask_density("conv", 8, 11), 2) == 0.92


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
    assert model.sparse_keys[row][last].tolist() == [0, 1, 2] + list(
        range(last - 4, last + 1)
    )  # prompt + one row's worth
    assert model.sparse_keys[column][last].tolist() == [0, 1, 2] + list(
        range(3 + 3, last + 1, 4)
    )  # prompt + its column
