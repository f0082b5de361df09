"""The model summary at fit start, without columns that say nothing."""

from __future__ import annotations

from lightning.pytorch.callbacks import ModelSummary
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.model_summary import get_human_readable_count


def summary_table(columns: list[tuple[str, list[str]]]) -> str:
    """Format ``(header, values)`` columns as a plain text table."""
    widths = [max([len(header), *map(len, map(str, values))]) for header, values in columns]
    rows = [[header for header, _ in columns]]
    rows += [list(map(str, row)) for row in zip(*(values for _, values in columns), strict=True)]
    lines = [" | ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in rows]
    rule = "-" * max(map(len, lines))
    return "\n".join([lines[0], rule, *lines[1:], rule])


class TrainableSummary(ModelSummary):
    """Lightning's model summary, plain text, without a FLOPs column of zeros.

    Lightning counts FLOPs only for a model with an ``example_input_array``; a style task
    has none (its inputs are a batch dict), so the column and the total read 0 for every
    module. They are left out when nothing was counted. The table goes to standard output
    once (rank 0), in plain text, so a job's log holds no box-drawing characters.
    """

    @staticmethod
    @rank_zero_only
    def summarize(
        summary_data: list[tuple[str, list[str]]],
        total_parameters: int,
        trainable_parameters: int,
        model_size: float,
        total_training_modes: dict[str, int],
        total_flops: int,
        **summarize_kwargs,
    ) -> None:
        """Print the table and the parameter totals."""
        columns = [(h, v) for h, v in summary_data if h != "FLOPs" or total_flops]
        totals = [
            (trainable_parameters, "trainable params"),
            (total_parameters - trainable_parameters, "frozen params"),
            (total_parameters, "total params"),
        ]
        lines = [summary_table(columns)]
        lines += [f"{get_human_readable_count(int(n)):<10}{what}" for n, what in totals]
        lines.append(f"{model_size:<10.1f}total parameter size (MB)")
        if total_flops:
            lines.append(f"{get_human_readable_count(int(total_flops)):<10}FLOPs")
        print("\n".join(lines), flush=True)
