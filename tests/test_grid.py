from PIL import Image

from artbank_pl.grid import CHAR_WIDTH, tile, wrap


def test_labels_wrap_to_their_cell_and_lose_no_character():
    label = "strength=0.75 guidance=7.5 a_very_long_collection_name_without_spaces"
    lines = wrap(label, 88)
    assert all(len(line) * CHAR_WIDTH <= 88 for line in lines)
    assert "".join(lines).replace(" ", "") == label.replace(" ", "")


def test_a_grid_has_a_row_label_column_and_a_header_as_tall_as_its_longest_label():
    cell = Image.new("RGB", (8, 8), "red")
    grid = tile([[cell, cell], [cell, None]], ["img00", "a label long enough to wrap twice"],
                cell=96, row_labels=["content", "strength=0.4 guidance=3"])  # fmt: skip
    lines = len(wrap("a label long enough to wrap twice", 88))
    assert lines == 3
    assert grid.size == (3 * 96, 6 + 12 * lines + 2 * 96)
    assert grid.getpixel((96 + 10, 6 + 12 * lines + 10)) == (255, 0, 0)  # first image cell
    assert grid.getpixel((10, 6 + 12 * lines + 40)) == (255, 255, 255)  # label column
