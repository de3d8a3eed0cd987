"""The QR code of an enrollment's otpauth:// URI: the one way totpd draws it.

Terminal text (`terminal_lines`, `block_lines`, `ascii_lines`) and image files (`png`, `svg`) all
come from one symbol made by `symbol`. The text comes back as lines, never printed
here: totpctl prints them, and a PAM conversation can send them as messages.

Why explicit colours: a QR code is read as dark modules on a light ground. Drawing
the modules in the terminal's own foreground colour (segno's compact terminal mode)
is right on a dark theme and inverted on a light one, where scanners refuse it. So
every cell here carries both its colours, dark modules on a light ground whatever
the theme, and the quiet zone is drawn in that light colour too. The colours are
entries 16 (black) and 231 (white) of the 256-colour cube, which terminal themes
leave alone; entries 0-15 are the theme's own, and light themes such as Gruvbox
light swap "black" and "white" among them.
"""

from __future__ import annotations

import io

import segno

# The light margin around the symbol, in modules. ISO/IEC 18004 asks for 4; 2 on a
# terminal is what the scanners we test with need, and keeps the code within 25 rows.
TERMINAL_QUIET_ZONE = 2
IMAGE_QUIET_ZONE = 4
IMAGE_SCALE = 8  # pixels per module in PNG and SVG files

# Black on white from the 256-colour cube, set on every line before its first cell.
_COLOURS = "\x1b[38;5;16;48;5;231m"
_RESET = "\x1b[0m"
# Foreground (dark) in the upper half, the lower half, both, neither: one text row
# holds two module rows, so the modules come out square on a terminal's tall cells.
_HALF_BLOCKS = {(True, True): "\u2588", (True, False): "\u2580", (False, True): "\u2584", (False, False): " "}
_ASCII_DARK, _ASCII_LIGHT = "##", "  "


def symbol(uri: str) -> segno.QRCode:
    """A regular QR code (never a Micro QR, which authenticator apps do not read)."""
    return segno.make(uri, error="m", micro=False)


def _rows(uri: str, border: int) -> list[list[bool]]:
    """The module matrix with its quiet zone: True for a dark module."""
    return [[bool(module) for module in row] for row in symbol(uri).matrix_iter(border=border)]


def block_lines(uri: str) -> list[str]:
    """The QR code as lines of half and full blocks, two module rows a line, with no
    colour: the dark modules are the text's foreground, so it is dark on light on a
    light theme and inverted on a dark one. Text only (no control character), for a
    PAM conversation, where no escape arrives: OpenSSH's client shows one as text."""
    rows = _rows(uri, TERMINAL_QUIET_ZONE)
    if len(rows) % 2:
        rows.append([False] * len(rows[0]))  # the lower half of the last text row: more quiet zone
    return [
        "".join(_HALF_BLOCKS[upper, lower] for upper, lower in zip(rows[i], rows[i + 1]))
        for i in range(0, len(rows), 2)
    ]


def terminal_lines(uri: str) -> list[str]:
    """The QR code as lines of colour text: dark on light on any terminal theme.

    Each line sets its colours (black foreground, white background) before its
    first cell and resets them at its end, so it stands alone wherever it is shown.
    """
    return [_COLOURS + line + _RESET for line in block_lines(uri)]


def ascii_lines(uri: str) -> list[str]:
    """The QR code in plain ASCII for terminals without colour: "##" for a dark module,
    two spaces for a light one (square modules, twice as wide as `terminal_lines`).
    It scans only where text is dark on a light background."""
    return ["".join(_ASCII_DARK if dark else _ASCII_LIGHT for dark in row) for row in _rows(uri, TERMINAL_QUIET_ZONE)]


def png(uri: str) -> bytes:
    buffer = io.BytesIO()
    symbol(uri).save(buffer, kind="png", scale=IMAGE_SCALE, border=IMAGE_QUIET_ZONE)
    return buffer.getvalue()


def svg(uri: str) -> bytes:
    buffer = io.BytesIO()
    symbol(uri).save(buffer, kind="svg", scale=IMAGE_SCALE, border=IMAGE_QUIET_ZONE)
    return buffer.getvalue()
