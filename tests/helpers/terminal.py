"""A terminal screen as a camera sees it: text with ANSI colours -> a PNG -> zbarimg.

`screenshot(text, theme)` draws `text` the way a terminal with that colour theme
would: each character is a cell of CELL_WIDTH x CELL_HEIGHT pixels; the half and
full blocks fill their part of the cell in the foreground colour; any other visible
character is drawn as a glyph's ink in the foreground colour; the rest of a cell is
the background. SGR escapes set the colours; a cell no escape coloured has the
theme's default colours, which is what makes a drawing right on one theme and
inverted on another. Anything this interpreter does not understand is an error,
never silently drawn. `camera` then blurs the screen as a phone's photo of it does,
and `zbar` reads the photo with the real zbarimg.
"""

from __future__ import annotations

import dataclasses
import re
import struct
import subprocess
import zlib
from pathlib import Path

CELL_WIDTH, CELL_HEIGHT = 8, 16
RGB = tuple[int, int, int]

# xterm's 16 colours; themes may replace them (Theme.palette).
XTERM_16: tuple[RGB, ...] = (
    (0, 0, 0), (205, 0, 0), (0, 205, 0), (205, 205, 0), (0, 0, 238), (205, 0, 205), (0, 205, 205), (229, 229, 229),
    (127, 127, 127), (255, 0, 0), (0, 255, 0), (255, 255, 0), (92, 92, 255), (255, 0, 255), (0, 255, 255), (255, 255, 255),
)


@dataclasses.dataclass(frozen=True)
class Theme:
    name: str
    foreground: RGB  # of cells no escape coloured
    background: RGB
    palette: tuple[RGB, ...] = XTERM_16  # colours 0-15

    def colour(self, index: int) -> RGB:
        if index < 16:
            return self.palette[index]
        if index < 232:  # the 6x6x6 cube
            index -= 16
            levels = (0, 95, 135, 175, 215, 255)
            return (levels[index // 36], levels[index // 6 % 6], levels[index % 6])
        grey = 8 + 10 * (index - 232)
        return (grey, grey, grey)


LIGHT = Theme("light", foreground=(0, 0, 0), background=(255, 255, 255))
DARK = Theme("dark", foreground=(204, 204, 204), background=(0, 0, 0))
# A light theme whose palette puts a light colour at "black" (0) and a dark one at
# "white" (7), as Gruvbox light does, so that white text stays readable on it.
LIGHT_SWAPPED_PALETTE = Theme(
    "light, palette black and white swapped", foreground=(60, 56, 54), background=(251, 241, 199),
    palette=((251, 241, 199), *XTERM_16[1:7], (124, 111, 100), *XTERM_16[8:]),
)
THEMES = (LIGHT, DARK, LIGHT_SWAPPED_PALETTE)

_ESCAPE = re.compile(r"\x1b\[([0-9;]*)m")
# Which fraction of the cell's height the foreground covers: (from, to).
_BLOCKS = {"\u2588": (0.0, 1.0), "\u2580": (0.0, 0.5), "\u2584": (0.5, 1.0)}


@dataclasses.dataclass
class Cell:
    char: str
    foreground: RGB
    background: RGB
    coloured: bool  # both colours were set by escapes (not the theme's defaults)


def cells(text: str, theme: Theme, columns: int = 80) -> list[list[Cell]]:
    """The screen's cells, line by line; lines longer than `columns` wrap, as on a terminal."""
    screen: list[list[Cell]] = [[]]
    foreground: int | RGB | None = None  # None: the theme's default
    background: int | RGB | None = None
    reverse = False
    position = 0
    while position < len(text):
        match = _ESCAPE.match(text, position)
        if match:
            foreground, background, reverse = _sgr(match.group(1), foreground, background, reverse)
            position = match.end()
            continue
        char = text[position]
        position += 1
        if char == "\x1b" or (char < " " and char != "\n"):
            raise ValueError(f"unexpected control character {char!r} at {position - 1}")
        if char == "\n":
            screen.append([])
            continue
        if len(screen[-1]) == columns:
            screen.append([])
        fg = theme.foreground if foreground is None else _rgb(foreground, theme)
        bg = theme.background if background is None else _rgb(background, theme)
        if reverse:
            fg, bg = bg, fg
        screen[-1].append(Cell(char, fg, bg, foreground is not None and background is not None))
    return screen


def _rgb(colour: int | RGB, theme: Theme) -> RGB:
    return theme.colour(colour) if isinstance(colour, int) else colour


def _sgr(params: str, foreground, background, reverse):  # type: ignore[no-untyped-def]
    """The colours and reverse-video state after one SGR escape (ESC [ params m)."""
    codes = [int(p) if p else 0 for p in params.split(";")]
    i = 0
    while i < len(codes):
        code = codes[i]
        if code == 0:
            foreground, background, reverse = None, None, False
        elif code == 7:
            reverse = True
        elif code == 27:
            reverse = False
        elif 30 <= code <= 37:
            foreground = code - 30
        elif 90 <= code <= 97:
            foreground = code - 90 + 8
        elif code == 39:
            foreground = None
        elif 40 <= code <= 47:
            background = code - 40
        elif 100 <= code <= 107:
            background = code - 100 + 8
        elif code == 49:
            background = None
        elif code in (38, 48) and codes[i + 1 : i + 2] == [5]:
            colour = codes[i + 2]
            i += 2
            foreground, background = (colour, background) if code == 38 else (foreground, colour)
        elif code in (38, 48) and codes[i + 1 : i + 2] == [2]:
            colour = tuple(codes[i + 2 : i + 5])
            i += 4
            foreground, background = (colour, background) if code == 38 else (foreground, colour)
        else:
            raise ValueError(f"SGR code {code} is not understood by this interpreter")
        i += 1
    return foreground, background, reverse


def _glyph(char: str) -> list[list[bool]]:
    """Which pixels of a cell the foreground covers."""
    if char == " ":
        return [[False] * CELL_WIDTH for _ in range(CELL_HEIGHT)]
    if char in _BLOCKS:
        top, bottom = (round(f * CELL_HEIGHT) for f in _BLOCKS[char])
        return [[top <= y < bottom] * CELL_WIDTH for y in range(CELL_HEIGHT)]
    if char == "#":  # two strokes down, two across, as a monospace font draws it
        return [
            [(3 <= y < 14 and x in (2, 3, 5, 6)) or (y in (6, 7, 10, 11) and 1 <= x < 8) for x in range(CELL_WIDTH)]
            for y in range(CELL_HEIGHT)
        ]
    # Any other visible character: its ink, roughly, between the baseline and the cap height.
    return [[4 <= y < 13 and 1 <= x < 7 and (x + y) % 2 == 0 for x in range(CELL_WIDTH)] for y in range(CELL_HEIGHT)]


def pixels(screen: list[list[Cell]], theme: Theme, columns: int = 80, margin: int = 2) -> list[list[RGB]]:
    """The screen as rows of RGB pixels, with `margin` empty cells all around (the window)."""
    width = (columns + 2 * margin) * CELL_WIDTH
    rows: list[list[RGB]] = [[theme.background] * width for _ in range(margin * CELL_HEIGHT)]
    for line in screen:
        band = [[theme.background] * width for _ in range(CELL_HEIGHT)]
        for column, cell in enumerate(line):
            ink = _glyph(cell.char)
            left = (margin + column) * CELL_WIDTH
            for y in range(CELL_HEIGHT):
                for x in range(CELL_WIDTH):
                    band[y][left + x] = cell.foreground if ink[y][x] else cell.background
        rows += band
    rows += [[theme.background] * width for _ in range(margin * CELL_HEIGHT)]
    return rows


def camera(rows: list[list[RGB]], pixel: int) -> list[list[int]]:
    """The picture as a camera takes it, in grey: each of its pixels sees a `pixel` x
    `pixel` patch of the screen, so a glyph's strokes blur into their surroundings,
    as they do in a phone's photo of a terminal."""
    out = []
    for top in range(0, len(rows) - pixel + 1, pixel):
        band = rows[top : top + pixel]
        line = []
        for left in range(0, len(rows[0]) - pixel + 1, pixel):
            total = sum(299 * r + 587 * g + 114 * b for row in band for r, g, b in row[left : left + pixel])
            line.append(total // (1000 * pixel * pixel))
        out.append(line)
    return out


def write_png(path: Path, rows: list[list[int]]) -> Path:
    """An 8-bit greyscale PNG, written with the standard library."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    raw = b"".join(b"\0" + bytes(row) for row in rows)
    header = struct.pack(">IIBBBBB", len(rows[0]), len(rows), 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
    return path


def screenshot(text: str, theme: Theme, path: Path, columns: int = 80, module_width: int = 1) -> Path:
    """`text` on a terminal `columns` wide, photographed so that each camera pixel sees
    half a module (`module_width` characters wide): the code fills the frame, as it
    does when a person holds a phone up to it. Returns the PNG's path."""
    screen = pixels(cells(text, theme, columns), theme, columns)
    return write_png(path, camera(screen, module_width * CELL_WIDTH // 2))


def zbar(path: Path, inverted: bool = False) -> str | None:
    """What zbarimg reads from the image: the QR code's text, or None if it finds none.
    `inverted`: also try the image light on dark, as scanners that read inverted codes do."""
    extra = ["-Stest-inverted"] if inverted else []
    result = subprocess.run(["zbarimg", "--quiet", "--raw", "-Sdisable", "-Sqrcode.enable", *extra, str(path)],
                            capture_output=True, text=True, timeout=60)
    if result.returncode == 4:  # no symbol found
        return None
    if result.returncode != 0:
        raise RuntimeError(f"zbarimg {path}: exit {result.returncode}: {result.stderr.strip()}")
    return result.stdout.rstrip("\n")


def read_on_every_theme(text: str, directory: Path, **photo: int) -> str:
    """The text of the one QR code zbarimg reads off `text` on each of THEMES without
    inverting, as a phone app that does not invert would; an AssertionError naming what
    each theme gave unless all read the same code. `photo`: `screenshot`'s columns, module_width."""
    read = {theme.name: zbar(screenshot(text, theme, directory / f"{theme.name}.png", **photo)) for theme in THEMES}
    found = read[LIGHT.name]
    assert found is not None and set(read.values()) == {found}, f"zbarimg read, by theme: {read}"
    return found
