"""The latency column names its spread (not an IQR) and flags a spread from a busy machine."""

from __future__ import annotations

import logging

from spa.experiments.report import WILD_SPREAD, AggregateRow, markdown_table


def _row(latency) -> AggregateRow:
    return AggregateRow(
        run="r",
        task="t",
        method="m",
        criterion="weight",
        step=0,
        target_density=1.0,
        seeds=(0,),
        latency=latency,
    )


def test_the_header_names_the_range_and_not_an_iqr():
    table = markdown_table([_row((2.0, 1.9, 2.1))])
    header = table.splitlines()[0]
    assert "IQR" not in header and "lowest Q1–highest Q3" in header
    assert "| 2.00 (1.90–2.10) |" in table and "!" not in table.split("\n\n")[0]


def test_a_wild_spread_is_marked_and_warned_about(caplog):
    # The figure: median 67.82 ms, range 0.66–1,986.52 ms (29 x the median).
    wild = (67.82, 0.66, 1986.52)
    assert (wild[2] - wild[1]) / wild[0] > WILD_SPREAD
    with caplog.at_level(logging.WARNING):
        table = markdown_table([_row(wild), _row((2.0, 1.9, 2.1))])
    assert "| 67.82 (0.66–1,986.52) ! |" in table and "| 2.00 (1.90–2.10) |" in table
    assert "! marks 1 latency figure(s)" in table
    assert any("spread wider than" in record.getMessage() for record in caplog.records)
