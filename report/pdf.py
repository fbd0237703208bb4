"""`report.pdf` on every machine: headless Chromium's print of the page where a Chromium is installed, else the
same sections drawn with matplotlib (text, tables and every figure; the "all fields" lists are left out of both,
as the page's print style does)."""
from __future__ import annotations

import shutil
import subprocess
import tempfile
import textwrap
from pathlib import Path

from matplotlib.backends.backend_pdf import PdfPages
from matplotlib.figure import Figure as Sheet
from matplotlib.image import imread

from report.blocks import Fields, Figures, Heading, Section, Table, Text, format_value

CHROMIUM = "Chromium"
MATPLOTLIB = "matplotlib"


def find_browser() -> str | None:
    """A headless-capable Chromium on PATH (Debian's `chromium` package), or None."""
    return shutil.which("chromium") or shutil.which("chromium-browser")


def renderer_name(browser: str | None) -> str:
    return CHROMIUM if browser else MATPLOTLIB


def write_pdf(page: Path, sections: list[Section], title: str, subtitle: str, browser: str | None) -> tuple[Path, str]:
    """`report.pdf` beside `page`: printed by `browser`, or drawn with matplotlib when it is None. Returns the path
    and the renderer's name."""
    pdf = page.parent / "report.pdf"
    if browser:
        with tempfile.TemporaryDirectory() as profile:
            subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                            "--disable-background-networking", "--disable-component-update", "--no-pdf-header-footer",
                            f"--user-data-dir={profile}", f"--print-to-pdf={pdf.resolve()}", page.resolve().as_uri()],
                           capture_output=True, timeout=180, check=True)
    else:
        draw_pdf(pdf, sections, title, subtitle)
    return pdf, renderer_name(browser)


# A4 portrait, inches; text sizes in points.
WIDTH, HEIGHT, MARGIN = 8.27, 11.69, 0.6
LINE = 1.45 / 72  # inches per point of font size
MONO_CHAR = 0.6 / 72  # a monospaced character's width, inches per point
CELL_CHARS = 40  # longer cells wrap onto more lines
HEADER_CHARS = 14


class Sheets:
    """Draws text lines, tables and images top down onto A4 pages, starting a new page when one is full."""

    def __init__(self, pdf: PdfPages):
        self.pdf, self.sheet, self.y = pdf, None, 0.0

    def new_page(self) -> None:
        self.close()
        self.sheet, self.y = Sheet(figsize=(WIDTH, HEIGHT)), HEIGHT - MARGIN

    def close(self) -> None:
        if self.sheet is not None:
            self.pdf.savefig(self.sheet)
            self.sheet = None

    def room(self, height: float) -> None:
        if self.sheet is None or self.y - height < MARGIN:
            self.new_page()

    def line(self, text: str, size: float = 8, **style) -> None:
        self.room(size * LINE)
        self.sheet.text(MARGIN / WIDTH, self.y / HEIGHT, text, fontsize=size, va="top", ha="left", **style)
        self.y -= size * LINE

    def paragraph(self, text: str, size: float = 8, **style) -> None:
        chars = int((WIDTH - 2 * MARGIN) / (size * 0.5 / 72))  # about half an em per proportional character
        for line in textwrap.wrap(text.replace("`", ""), chars) or [""]:
            self.line(line, size, **style)
        self.y -= size * LINE / 2

    def table(self, table: Table) -> None:
        """Monospaced columns; long cells wrap within their column (headers to the body's width, at least
        HEADER_CHARS), marked rows bold with an arrow."""
        body = [[textwrap.wrap(format_value(v), CELL_CHARS) or [""] for v in row] for row in table.rows]
        columns = range(len(table.header))
        body_widths = [max((len(piece) for row in body for piece in row[i]), default=0) for i in columns]
        header = [textwrap.wrap(str(h).replace("_", " "), max(HEADER_CHARS, body_widths[i])) or [""]
                  for i, h in enumerate(table.header)]
        widths = [max(body_widths[i], *(len(piece) for piece in header[i])) for i in columns]
        rows = [(header, True, False)] + [(row, False, i in table.marked) for i, row in enumerate(body)]
        size = max(4.0, min(7.5, (WIDTH - 2 * MARGIN) / ((sum(widths) + 2 * len(widths) + 2) * MONO_CHAR)))
        for cells, is_header, marked in rows:
            for line in range(max(len(cell) for cell in cells)):
                text = "  ".join((cell[line] if line < len(cell) else "").ljust(w) for cell, w in zip(cells, widths))
                self.line(("▶ " if marked and line == 0 else "  ") + text, size, family="monospace",
                          weight="bold" if is_header or marked else "normal")
        self.y -= size * LINE

    def image(self, path: Path, caption: str) -> None:
        pixels = imread(path)
        rows, cols = pixels.shape[:2]
        width = WIDTH - 2 * MARGIN
        height = min(width * rows / cols, (HEIGHT - 2 * MARGIN) * 0.8)
        width = height * cols / rows
        self.room(height + 10 * LINE)
        axes = self.sheet.add_axes((MARGIN / WIDTH, (self.y - height) / HEIGHT, width / WIDTH, height / HEIGHT))
        axes.imshow(pixels, interpolation="nearest")
        axes.set_axis_off()
        self.y -= height + 2 / 72
        self.paragraph(caption, 7, color="#555555")


def draw_pdf(path: Path, sections: list[Section], title: str, subtitle: str) -> None:
    """Every section from a new page: its title, its text and tables, then its figures at the page's width."""
    with PdfPages(path, metadata={"Title": title, "Creator": "report (matplotlib)"}) as pdf:
        sheets = Sheets(pdf)
        sheets.new_page()
        sheets.line(title, 16, weight="bold")
        sheets.y -= 0.1
        sheets.paragraph(subtitle, 9, color="#555555")
        for number, section in enumerate(sections, 1):
            sheets.line(f"{number}. {section.title}", 9)
        for section in sections:
            sheets.new_page()
            sheets.line(section.title, 13, weight="bold")
            sheets.y -= 0.08
            for block in section.blocks:
                if isinstance(block, Text):
                    sheets.paragraph(block.text, color="#8a5a00" if block.note else "black")
                elif isinstance(block, Heading):
                    sheets.line(block.text, 9.5, weight="bold")
                elif isinstance(block, Table):
                    sheets.table(block)
                elif isinstance(block, Figures):
                    for figure in block.figures:
                        sheets.image(figure.path, figure.caption)
                elif not isinstance(block, Fields):
                    raise TypeError(f"not a report block: {block!r}")
        sheets.close()
