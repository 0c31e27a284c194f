"""What ``recbench data info`` prints of a prepared dataset."""

from __future__ import annotations

from typing import Any

from rich.console import Console


def print_data_info(data: Any) -> None:
    """``recbench data info``: a prepared dataset's sizes, splits and schema, to stdout."""
    from rich.table import Table

    out = Console()
    info = data.info
    sizes = ", ".join(f"{info[k]:,} {k}" for k in ("users", "items") if info.get(k) is not None)
    out.print(
        f"[bold]{info['name']}[/]: {sizes or 'no user/item ids'}; cache {info.get('cache_dir', '')}"
    )
    t = Table(title="splits")
    for c in ("split", "rows", "label rate", "unseen-user rows", "unseen-item rows"):
        t.add_column(c, justify="right")
    for split, rows in info["rows"].items():
        unseen = (info.get("unseen") or {}).get(split, {})
        t.add_row(
            split,
            f"{rows:,}",
            "-" if (rate := info["label_rate"][split]) is None else f"{rate:.3f}",
            str(unseen.get("user_rows", "-")),
            str(unseen.get("item_rows", "-")),
        )
    out.print(t)
    f = Table(title="schema")
    for c in ("field", "kind", "vocab", "max_len", "shares"):
        f.add_column(c)
    for fld in data.schema.fields:
        f.add_row(
            fld.name,
            fld.kind,
            str(fld.vocab_size or "-"),
            str(fld.max_len) if fld.kind in ("multi", "sequence") else "-",
            fld.shares or "-",
        )
    out.print(f)
    if "oracle_auc" in info:
        o = info["oracle_auc"]["test"]
        out.print("oracle test AUC: " + ", ".join(f"{k}={v:.4f}" for k, v in o.items()))


__all__ = ["print_data_info"]
