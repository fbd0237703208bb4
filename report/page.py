"""The report as one static `index.html` (no server): sections drawn into `page.html`, images copied into `img/`
beside it, so the folder can be moved or zipped as it is."""
from __future__ import annotations

import html
import re
import shutil
from pathlib import Path
from string import Template

from report.blocks import Fields, Figure, Figures, Heading, Section, Table, Text, format_value

HERE = Path(__file__).parent


def _inline(text: str) -> str:
    """Escaped text with `backticks` as code."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(text))


def _cell(value) -> str:
    numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
    return f"<td class='num'>{html.escape(format_value(value))}</td>" if numeric else \
        f"<td>{html.escape(format_value(value))}</td>"


def table_html(table: Table) -> str:
    """Numbers right-aligned, snake_case headers shown with spaces (so they wrap), marked rows highlighted."""
    head = "".join(f"<th>{html.escape(str(h).replace('_', ' '))}</th>" for h in table.header)
    body = "".join(("<tr class='mark'>" if i in table.marked else "<tr>") + "".join(_cell(v) for v in row) + "</tr>"
                   for i, row in enumerate(table.rows))
    return f"<table><tr>{head}</tr>{body}</table>"


class PageWriter:
    """Draws blocks as HTML, copying each figure into `out/img/` under a numbered name."""

    def __init__(self, out: Path):
        self.out = out
        self.copied = 0
        (out / "img").mkdir(parents=True, exist_ok=True)

    def figure(self, figure: Figure) -> str:
        self.copied += 1
        name = f"{self.copied:03d}_{figure.path.name}"
        shutil.copyfile(figure.path, self.out / "img" / name)
        caption = html.escape(figure.caption)
        return (f"<figure><a href='img/{name}'><img src='img/{name}' alt='{caption}'></a>"
                f"<figcaption>{caption}</figcaption></figure>")

    def block(self, block) -> str:
        if isinstance(block, Text):
            return f"<p class='note'>{_inline(block.text)}</p>" if block.note else f"<p>{_inline(block.text)}</p>"
        if isinstance(block, Heading):
            return f"<h3>{html.escape(block.text)}</h3>"
        if isinstance(block, Table):
            return table_html(block)
        if isinstance(block, Figures):
            inner = "".join(self.figure(f) for f in block.figures)
            return f"<div class='{'pair' if block.side_by_side else 'grid'}'>{inner}</div>"
        if isinstance(block, Fields):
            return (f"<details><summary>{html.escape(block.label)}</summary>"
                    f"{table_html(Table(['field', 'value'], [list(row) for row in block.rows]))}</details>")
        raise TypeError(f"not a report block: {block!r}")


def write_page(out: Path, title: str, subtitle: str, sections: list[Section]) -> Path:
    """`out/index.html` (with `out/img/`), replacing what `out` held."""
    if out.exists():
        shutil.rmtree(out)
    writer = PageWriter(out)
    anchors = [f"s{i}" for i in range(len(sections))]
    nav = "".join(f"<a href='#{a}'>{html.escape(s.title)}</a>" for a, s in zip(anchors, sections))
    body = "".join(f"<h2 id='{a}'>{html.escape(s.title)}</h2>" + "".join(writer.block(b) for b in s.blocks)
                   for a, s in zip(anchors, sections))
    page = Template((HERE / "page.html").read_text()).substitute(
        title=html.escape(title), style=(HERE / "page.css").read_text(), nav=nav, body=body,
        subtitle=f"<p class='sub'>{html.escape(subtitle)}</p>" if subtitle else "")
    path = out / "index.html"
    path.write_text(page)
    return path
