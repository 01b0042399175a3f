"""A report as a list of blocks, rendered to Markdown and to one self-contained HTML page.

Rules for changing it:
- Text in blocks is Markdown-light: ``**bold**``, ``*italic*`` and ```code``` spans only. The Markdown renderer
  writes it as is; the HTML renderer escapes everything first (``html.escape``) and then turns
  those spans into tags, so no text from a run folder can inject markup.
- Figures are PNG bytes embedded as ``data:`` URIs; the page loads nothing and runs no script.
  In Markdown a figure is one italic line that points to report.html.
"""

from __future__ import annotations

import base64
import html
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Heading:
    level: int
    text: str
    anchor: str = ""


@dataclass(frozen=True)
class Paragraph:
    text: str
    callout: bool = False  # set apart in HTML (the plain-language summary)


@dataclass(frozen=True)
class Item:
    text: str
    children: tuple[str, ...] = ()


@dataclass(frozen=True)
class Bullets:
    items: tuple[Item, ...]


@dataclass(frozen=True)
class Table:
    header: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    numeric: tuple[bool, ...] = field(default=())  # right-align these columns in HTML
    caption: str = ""


@dataclass(frozen=True)
class Figure:
    key: str  # the PNG's key in the figures mapping
    caption: str
    alt: str


Block = Heading | Paragraph | Bullets | Table | Figure


# ----------------------------------------------------------------------------------- Markdown

def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def to_markdown(blocks: Sequence[Block]) -> str:
    out: list[str] = []
    for b in blocks:
        if isinstance(b, Heading):
            out.append("#" * b.level + " " + b.text + "\n")
        elif isinstance(b, Paragraph):
            out.append(b.text + "\n")
        elif isinstance(b, Bullets):
            for it in b.items:
                out.append(f"- {it.text}")
                out.extend(f"  - {c}" for c in it.children)
            out.append("")
        elif isinstance(b, Table):
            if b.caption:
                out.append(b.caption + "\n")
            out.append("| " + " | ".join(_md_cell(h) for h in b.header) + " |")
            out.append("|" + "---|" * len(b.header))
            out.extend("| " + " | ".join(_md_cell(c) for c in row) + " |" for row in b.rows)
            out.append("")
        elif isinstance(b, Figure):
            out.append(f"*Figure in report.html: {b.alt}.*\n")
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------------------- HTML

_BOLD = re.compile(r"\*\*(.+?)\*\*")
_CODE = re.compile(r"`([^`]+)`")
_EM = re.compile(r"(?<![*\w])\*([^*\s][^*]*?)\*(?![*\w])")


def inline_html(text: str) -> str:
    """Escapes ``text``, then renders its ``**bold**``, ``*italic*`` and ```code``` spans."""
    s = html.escape(text, quote=True)
    s = _CODE.sub(r"<code>\1</code>", s)
    s = _BOLD.sub(r"<strong>\1</strong>", s)
    return _EM.sub(r"<em>\1</em>", s)


CSS = """
:root { --fg: #1d2430; --muted: #5b6472; --line: #d6dbe3; --band: #f4f6f9; --accent: #1f5fa8; }
* { box-sizing: border-box; }
body { margin: 0; color: var(--fg); background: #fff;
  font: 16px/1.55 -apple-system, "Segoe UI", Roboto, "DejaVu Sans", Arial, sans-serif; }
main { max-width: 1240px; margin: 0 auto; padding: 24px 28px 64px; }
h1 { font-size: 1.75rem; margin: 0.2em 0 0.4em; }
h2 { font-size: 1.3rem; margin: 2em 0 0.6em; padding-bottom: 0.25em;
  border-bottom: 2px solid var(--line); }
h3 { font-size: 1.08rem; margin: 1.4em 0 0.4em; }
p, li { max-width: 72em; }
code { font: 0.9em/1.3 "DejaVu Sans Mono", Menlo, Consolas, monospace; background: var(--band);
  padding: 0.05em 0.3em; border-radius: 3px; }
nav { background: var(--band); border: 1px solid var(--line); border-radius: 6px;
  padding: 10px 16px; margin: 12px 0 20px; }
nav ol { margin: 0.2em 0; padding-left: 1.4em; columns: 2; }
nav a { color: var(--accent); text-decoration: none; }
.plain { background: #eef5ff; border-left: 4px solid var(--accent); padding: 12px 16px;
  border-radius: 0 6px 6px 0; }
.scroll { overflow-x: auto; margin: 0.6em 0 1.2em; }
table { border-collapse: collapse; font-size: 0.84rem; }
caption { caption-side: top; text-align: left; color: var(--muted); padding-bottom: 4px; }
th, td { border: 1px solid var(--line); padding: 3px 7px; vertical-align: top; }
th { background: var(--band); text-align: left; }
table.data td { white-space: nowrap; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
tbody tr:nth-child(even) td { background: #fafbfc; }
table.prose td { min-width: 14em; }
figure { margin: 1em 0 1.6em; }
figure img { display: block; max-width: min(100%, 1120px); height: auto; border: 1px solid var(--line);
  border-radius: 4px; }
figcaption { color: var(--muted); font-size: 0.9rem; margin-top: 6px; max-width: 72em; }
footer { color: var(--muted); font-size: 0.85rem; margin-top: 3em; }
"""


def _table_html(b: Table) -> str:
    prose = not any(b.numeric) and any(len(c) > 60 for row in b.rows for c in row)
    h = [f'<div class="scroll"><table class="{"prose" if prose else "data"}">']
    if b.caption:
        h.append(f"<caption>{inline_html(b.caption)}</caption>")
    h.append("<thead><tr>" + "".join(f"<th>{inline_html(x)}</th>" for x in b.header)
             + "</tr></thead><tbody>")
    for row in b.rows:
        cells = []
        for i, c in enumerate(row):
            num = i < len(b.numeric) and b.numeric[i]
            cells.append(f'<td class="num">{inline_html(c)}</td>' if num
                         else f"<td>{inline_html(c)}</td>")
        h.append("<tr>" + "".join(cells) + "</tr>")
    h.append("</tbody></table></div>")
    return "".join(h)


def to_html(blocks: Sequence[Block], *, title: str, figures: Mapping[str, bytes],
            footer: str = "") -> str:
    """One page: inline CSS, PNG figures as data URIs, a contents list of the level-2 headings."""
    body: list[str] = []
    toc = [b for b in blocks if isinstance(b, Heading) and b.level == 2 and b.anchor]
    for b in blocks:
        if isinstance(b, Heading):
            aid = f' id="{html.escape(b.anchor)}"' if b.anchor else ""
            body.append(f"<h{b.level}{aid}>{inline_html(b.text)}</h{b.level}>")
            if b.level == 1 and toc:
                body.append("<nav><strong>Contents</strong><ol>" + "".join(
                    f'<li><a href="#{html.escape(t.anchor)}">{inline_html(t.text)}</a></li>'
                    for t in toc) + "</ol></nav>")
        elif isinstance(b, Paragraph):
            cls = ' class="plain"' if b.callout else ""
            body.append(f"<p{cls}>{inline_html(b.text)}</p>")
        elif isinstance(b, Bullets):
            items = []
            for it in b.items:
                sub = ("<ul>" + "".join(f"<li>{inline_html(c)}</li>" for c in it.children)
                       + "</ul>") if it.children else ""
                items.append(f"<li>{inline_html(it.text)}{sub}</li>")
            body.append("<ul>" + "".join(items) + "</ul>")
        elif isinstance(b, Table):
            body.append(_table_html(b))
        elif isinstance(b, Figure):
            png = figures.get(b.key)
            if png is None:
                continue
            uri = "data:image/png;base64," + base64.b64encode(png).decode("ascii")
            body.append(f'<figure><img src="{uri}" alt="{html.escape(b.alt, quote=True)}">'
                        f"<figcaption>{inline_html(b.caption)}</figcaption></figure>")
    foot = f"<footer>{inline_html(footer)}</footer>" if footer else ""
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{html.escape(title)}</title><style>{CSS}</style></head>"
            "<body><main>\n" + "\n".join(body) + f"\n{foot}</main></body></html>\n")
