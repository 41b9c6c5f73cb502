"""Parameter counts and layer-by-layer summaries (torchinfo) for a 3x32x32 input."""

from __future__ import annotations

from torch import nn


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def summarize(model: nn.Module, input_size: tuple[int, ...] = (1, 3, 32, 32), depth: int = 3) -> dict:
    """Rows ``{layer, type, output_shape, params, macs}`` per module up to ``depth`` and the totals.

    Returns ``{"rows": [...], "total": {"params", "trainable_params", "macs", "output_shape"}}``;
    MACs are per batch of ``input_size``.
    """
    import torchinfo

    stats = torchinfo.summary(model, input_size=input_size, depth=depth, verbose=0, device="cpu")
    names = {id(m): name for name, m in model.named_modules()}
    rows = []
    for layer in stats.summary_list:
        if layer.depth == 0 or layer.depth > depth:
            continue
        rows.append(
            {
                "layer": names.get(layer.layer_id, layer.var_name),
                "type": layer.class_name,
                "output_shape": tuple(layer.output_size),
                "params": layer.leftover_params() if layer.children and layer.depth < depth else layer.num_params,
                "macs": layer.macs,
                "depth": layer.depth,
            }
        )
    return {
        "rows": rows,
        "total": {
            "params": stats.total_params,
            "trainable_params": stats.trainable_params,
            "macs": stats.total_mult_adds,
            "output_shape": tuple(stats.summary_list[0].output_size),
        },
    }


def summary_table(model: nn.Module, title: str = ""):
    """A rich ``Table`` of ``summarize(model)`` for the CLI."""
    from rich.table import Table

    info = summarize(model)
    table = Table(title=title or type(model).__name__, show_footer=True)
    table.add_column("layer", footer="total")
    table.add_column("type")
    table.add_column("output shape", footer=str(info["total"]["output_shape"]))
    table.add_column("params", justify="right", footer=f"{info['total']['params']:,}")
    table.add_column("MACs", justify="right", footer=f"{info['total']['macs']:,}")
    for row in info["rows"]:
        indent = "  " * (row["depth"] - 1)
        table.add_row(
            indent + row["layer"], row["type"], str(row["output_shape"]), f"{row['params']:,}", f"{row['macs']:,}"
        )
    return table
