"""sparsetrain.tables: one formatter for every table (aligned text, markdown, CSV)."""

import csv
import io

import pytest

from sparsetrain.tables import Column, render

COLUMNS = [Column("name", align="left"), Column("acc", "accuracy", ".4f"), Column("n", format=","),
           Column("note", format=lambda v: v.upper(), missing="—")]
ROWS = [{"name": "granet", "acc": 0.827, "n": 12345, "note": "ok"},
        {"name": "dense-baseline", "acc": None, "n": 7, "note": None}]


def test_aligned_text_pads_each_column_to_its_widest_cell_and_drops_trailing_spaces():
    assert render(COLUMNS, ROWS) == (
        "name            accuracy       n  note\n"
        "--------------  --------  ------  ----\n"
        "granet            0.8270  12,345    OK\n"
        "dense-baseline         -       7     —")
    left_last = render([Column("a"), Column("b", align="left")], [["1", "x"], ["22", "yyyy"]])
    assert left_last.splitlines() == [" a  b", "--  ----", " 1  x", "22  yyyy"]


def test_markdown_aligns_with_the_separator_row():
    assert render(COLUMNS, ROWS, "markdown").splitlines() == [
        "| name | accuracy | n | note |", "|---|---:|---:|---:|",
        "| granet | 0.8270 | 12,345 | OK |", "| dense-baseline | - | 7 | — |"]


def test_csv_has_the_keys_and_raw_values():
    text = render(COLUMNS, ROWS, "csv")
    assert text.endswith("\n") and text.splitlines()[0] == "name,acc,n,note"
    rows = list(csv.DictReader(io.StringIO(text)))
    assert rows[0] == {"name": "granet", "acc": "0.827", "n": "12345", "note": "ok"}
    assert rows[1] == {"name": "dense-baseline", "acc": "", "n": "7", "note": ""}


def test_sequence_rows_are_read_by_position_and_strings_are_columns():
    assert render(["a", "b"], [(1, 2.5), (None, "x")], "csv") == "a,b\n1,2.5\n,x\n"
    assert render(["a", "b"], [(1, 2.5)], "markdown") == "| a | b |\n|---:|---:|\n| 1 | 2.5 |"
    assert render(["a"], [], "table") == "a\n-"


def test_bad_arguments_name_themselves():
    with pytest.raises(ValueError, match="format='xml' is not allowed; choose one of table, markdown, csv"):
        render(COLUMNS, ROWS, "xml")
    with pytest.raises(ValueError, match="align='centre' is not allowed"):
        Column("x", align="centre")
