"""HTML pieces of the report page: escaping, embedded images, tables, cell formats, CSS.

Every string that comes from a file (edit names, ids, paths, config values) goes through
:func:`esc`; ``://`` and ``@`` are written as character references as well, so even a
path that contains a URL cannot put a live reference into the page (it renders the same).
"""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Sequence
from typing import Any

from unveil.analysis.report_verdict import fixed


def esc(value: Any) -> str:
    """HTML-escape text from a file; ``://`` and ``@`` become character references too.

    The page must hold no URL and no CSS ``@import``, even where a user's path or edit
    name contains one; the references render as the same characters.
    """
    return html.escape(str(value), quote=True).replace("://", "&#58;//").replace("@", "&#64;")


def data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def img(data: bytes, mime: str, alt: str, cls: str = "") -> str:
    """An ``<img>`` holding ``data`` (no file, no URL)."""
    c = f' class="{cls}"' if cls else ""
    return f'<img{c} alt="{esc(alt)}" src="{data_uri(data, mime)}">'


def figure(img_html: str, caption: str) -> str:
    return f"<figure>{img_html}<figcaption>{caption}</figcaption></figure>"


def table(
    header: Sequence[str], rows: Sequence[Sequence[str]], row_classes: Sequence[str] = ()
) -> str:
    """A table; header and cells must already be escaped HTML."""
    head = "".join(f"<th>{h}</th>" for h in header)
    body = []
    for i, cells in enumerate(rows):
        cls = row_classes[i] if i < len(row_classes) and row_classes[i] else ""
        attr = f' class="{cls}"' if cls else ""
        body.append(f"<tr{attr}>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def num_cell(x: float, digits: int = 2) -> str:
    """A number with ``digits`` decimals; ``inf``/``-inf`` as such, ``n/a`` for NaN."""
    if math.isinf(x):
        return str(x)
    return fixed(x, digits) if math.isfinite(x) else "n/a"


def count_cell(n: int | None) -> str:
    return "n/a" if n is None else f"{n:.0f}"


def p_cell(x: float) -> str:
    """A p- or q-value cell: ``&lt;0.001`` or three decimals."""
    if not math.isfinite(x):
        return "n/a"
    return "&lt;0.001" if x < 0.001 else f"{x:.3f}"


def group_cell(name: str | None, n: int | None) -> str:
    """``name (n)``; a dash for the empty second group of a numeric (slope) row."""
    text = "" if name is None else name.strip()
    if not text or text == "nan":
        return "&mdash;"
    return f"{esc(text)} ({n:.0f})" if n is not None else esc(text)


CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;
max-width:1200px;margin:0 auto;padding:1.5rem;color:#1a1a1a;line-height:1.45;font-size:16px}
h1{font-size:1.6rem;margin-bottom:.2rem}h2{font-size:1.3rem;border-bottom:2px solid #ddd;
padding-bottom:.2rem;margin-top:2.2rem}h3{font-size:1.05rem;margin-bottom:.3rem}
.sub{color:#555;margin-top:0}
.verdict{border:2px solid #333;border-radius:8px;padding:.6rem 1rem;background:#fafafa}
.verdict ul{margin:.3rem 0;padding-left:1.2rem}.verdict li{margin:.25rem 0;font-size:1.05rem}
li.effect{color:#7a0019;font-weight:600}li.pass{color:#1b6e20}li.fail{color:#b00020;font-weight:700}
li.missed{color:#b00020;font-weight:600}li.none{color:#333}li.info{color:#555}
dl.asked{display:grid;grid-template-columns:max-content 1fr;gap:.15rem 1rem}
dl.asked dt{font-weight:600}dl.asked dd{margin:0}
table{border-collapse:collapse;margin:.4rem 0;font-size:.9rem}
th,td{border:1px solid #ccc;padding:.25rem .5rem;text-align:right}
th{background:#f0f0f0}td:first-child,td:nth-child(2),th:first-child{text-align:left}
tr.sig td{background:#fde0dd}tr.warn td{background:#fff3cd}
.pair{display:flex;flex-wrap:wrap;gap:1.5rem;align-items:flex-start}.pair>div{flex:1 1 420px}
figure{margin:.6rem 0}figcaption{font-size:.85rem;color:#444}
img{max-width:100%;height:auto}img.gif{image-rendering:pixelated;width:100%;max-width:720px}
.note{font-size:.85rem;color:#555}.caution{font-size:.9rem;color:#8a4b00}
code{background:#f3f3f3;padding:0 .2rem;border-radius:3px}
"""
