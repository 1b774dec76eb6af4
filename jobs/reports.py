"""Reports: a long job that shows its progress and leaves a file to download."""
from __future__ import annotations

import csv
import html
import io
import random
import time
import uuid
from collections import defaultdict
from datetime import date, timedelta
from typing import Annotated, Any, Iterable, Literal

from typing_extensions import TypedDict  # pydantic needs it on Python < 3.12

from pydantic import Field, StringConstraints
from rq import get_current_job

from jobs import _artifacts, defaults, progress

Label = Annotated[str, StringConstraints(min_length=1, max_length=100)]


class Sale(TypedDict):
    """One row of a sales report."""

    date: Annotated[str, StringConstraints(pattern=r"^\d{4}-\d{2}-\d{2}$")]
    region: Label
    product: Label
    units: Annotated[int, Field(ge=0, le=10**9)]
    unit_price: Annotated[float, Field(ge=0, le=10**9)]


_REGIONS = ("North", "South", "East", "West", "Central")
_PRODUCTS = ("Widget", "Gadget", "Gizmo", "Doohickey", "Sprocket", "Thingamajig")


@defaults(queue="low", timeout=1800, retry={"max": 2, "backoff": [30]})
def generate(
    title: Annotated[str, StringConstraints(min_length=1, max_length=200)] = "Sales report",
    format: Literal["html", "csv"] = "html",
    rows: Annotated[list[Sale], Field(max_length=20_000)] | None = None,
    generated: Annotated[int, Field(ge=1, le=1_000_000)] = 20_000,
    seed: int = 1,
    steps: Annotated[int, Field(ge=1, le=100)] = 20,
    pause: Annotated[float, Field(ge=0, le=10)] = 0.0,
) -> dict[str, Any]:
    """Summarise sales rows (revenue by region, product and month) into an HTML or CSV report.

    Summarises the given `rows`, or `generated` rows of made-up sales (the same
    ones for the same `seed`), in `steps` steps, reporting progress after each
    (`pause` seconds between steps slows it down for a demo). The file is kept
    as an artifact: the result's `artifact.url` downloads it.
    """
    source = list(rows) if rows is not None else None
    total = len(source) if source is not None else generated
    summary = _Summary()
    chunk = -(-total // steps)  # ceiling division
    stream = iter(source) if source is not None else _made_up(generated, seed)
    done = 0
    for step in range(1, steps + 1):
        for _, row in zip(range(chunk), stream):
            summary.add(row)
            done += 1
        progress(step, steps + 1, f"summarised {done:,} of {total:,} rows")
        if pause:
            time.sleep(pause)
    name = f"report.{format}"
    data = _html(title, summary) if format == "html" else _csv(summary)
    job = get_current_job()
    job_id = job.id if job is not None else f"local-{uuid.uuid4()}"
    _artifacts.save(job_id, name, data)
    progress(steps + 1, steps + 1, f"wrote {name}")
    return {
        "artifact": {
            "name": name,
            "url": _artifacts.url(job_id, name),
            "bytes": len(data),
            "content_type": _artifacts.content_type(name),
        },
        "rows": done,
        "totals": summary.totals(),
    }


def _made_up(count: int, seed: int) -> Iterable[Sale]:
    rng = random.Random(seed)
    start = date(2025, 1, 1)
    for _ in range(count):
        yield {
            "date": (start + timedelta(days=rng.randrange(365))).isoformat(),
            "region": rng.choice(_REGIONS),
            "product": rng.choice(_PRODUCTS),
            "units": rng.randint(1, 20),
            "unit_price": round(rng.uniform(2, 200), 2),
        }


class _Summary:
    def __init__(self) -> None:
        self.by_pair: dict[tuple[str, str], list[float]] = defaultdict(lambda: [0, 0, 0.0])
        self.by_month: dict[str, list[float]] = defaultdict(lambda: [0, 0, 0.0])

    def add(self, row: Sale) -> None:
        revenue = row["units"] * row["unit_price"]
        for bucket in (self.by_pair[(row["region"], row["product"])], self.by_month[row["date"][:7]]):
            bucket[0] += 1
            bucket[1] += row["units"]
            bucket[2] += revenue

    def grouped(self, index: int) -> dict[str, list[float]]:
        out: dict[str, list[float]] = defaultdict(lambda: [0, 0, 0.0])
        for key, (orders, units, revenue) in self.by_pair.items():
            bucket = out[key[index]]
            bucket[0] += orders
            bucket[1] += units
            bucket[2] += revenue
        return dict(out)

    def totals(self) -> dict[str, float]:
        orders = sum(v[0] for v in self.by_pair.values())
        units = sum(v[1] for v in self.by_pair.values())
        revenue = sum(v[2] for v in self.by_pair.values())
        return {"orders": int(orders), "units": int(units), "revenue": round(revenue, 2)}


def _csv(summary: _Summary) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["region", "product", "orders", "units", "revenue"])
    for (region, product), (orders, units, revenue) in sorted(summary.by_pair.items()):
        writer.writerow([_cell(region), _cell(product), int(orders), int(units), f"{revenue:.2f}"])
    totals = summary.totals()
    writer.writerow(["TOTAL", "", totals["orders"], totals["units"], f"{totals['revenue']:.2f}"])
    return out.getvalue().encode()


def _cell(text: str) -> str:
    # A cell starting like a formula would run as one in a spreadsheet.
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def _html(title: str, summary: _Summary) -> bytes:
    totals = summary.totals()

    def table(heading: str, label: str, groups: dict[str, list[float]]) -> str:
        body = "".join(
            f"<tr><td>{html.escape(str(key))}</td><td>{int(o):,}</td><td>{int(u):,}</td><td>{r:,.2f}</td></tr>"
            for key, (o, u, r) in sorted(groups.items(), key=lambda item: (-item[1][2], str(item[0])))
        )
        return (
            f"<h2>{heading}</h2><table><thead><tr><th>{label}</th><th>orders</th><th>units</th>"
            f"<th>revenue</th></tr></thead><tbody>{body}</tbody></table>"
        )

    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font:15px system-ui,sans-serif;margin:2rem auto;max-width:50rem;color:#222}}
table{{border-collapse:collapse;margin-bottom:1.5rem;width:100%}}th,td{{padding:.3rem .6rem;border-bottom:1px solid #ddd}}
td+td,th+th{{text-align:right}}th{{text-align:left;background:#f3f3f3}}</style></head>
<body><h1>{html.escape(title)}</h1>
<p>{totals['orders']:,} orders, {totals['units']:,} units, revenue {totals['revenue']:,.2f}.</p>
{table("By region", "region", summary.grouped(0))}
{table("By product", "product", summary.grouped(1))}
{table("By month", "month", dict(summary.by_month))}
</body></html>
"""
    return page.encode()
