"""The QR code of an enrollment's otpauth:// URI: the one way totpd draws it.

Terminal text (`terminal_lines`, `block_lines`, `ascii_lines`) and image files (`png`, `svg`) all
come from one symbol made by `symbol`. The text comes back as lines, never printed
here: totpctl prints them, and a PAM conversation can send them as messages.

A QR code is read as dark modules on a light ground, and most phone scanners do not
read it inverted. Text drawn in the terminal's own colours is dark on light on a
light theme and light on dark on a dark one, and no choice of characters is right on
both: a cell is darker on a light theme exactly where it is lighter on a dark one.
So there are two ways:

- `terminal_lines`, where colour escapes arrive (totpctl on a terminal): every cell
  carries both its colours, dark modules on a light ground whatever the theme, and
  the quiet zone is drawn in that light colour too. The colours are entries 16
  (black) and 231 (white) of the 256-colour cube, which terminal themes leave alone;
  entries 0-15 are the theme's own, and light themes such as Gruvbox light swap
  "black" and "white" among them.
- `block_lines` and `ascii_lines`, where no escape arrives (a PAM conversation, whose
  OpenSSH client prints an ESC as text; NO_COLOR; a file): two copies of the code,
  one with the dark modules drawn in the text's colour (right on a light theme) and
  one with the light modules and its quiet zone drawn in it (right on a dark theme),
  side by side where both fit the width, else one above the other, under a caption
  (`TWO_COPIES`) that says to scan the one that looks dark on light.
"""

from __future__ import annotations

import io

import segno

# The light margin around the symbol, in modules. ISO/IEC 18004 asks for 4; 2 on a
# terminal is what the scanners we test with need, and keeps the code within 25 rows.
TERMINAL_QUIET_ZONE = 2
IMAGE_QUIET_ZONE = 4
IMAGE_SCALE = 8  # pixels per module in PNG and SVG files
TERMINAL_COLUMNS = 80  # what a PAM conversation may assume of the terminal it never sees
COPIES_GAP = 2  # columns between two copies side by side

# What to say above the two copies of `block_lines` and `ascii_lines`.
TWO_COPIES = "Scan whichever QR code below looks dark on light with an authenticator app"

# Black on white from the 256-colour cube, set on every line before its first cell.
_COLOURS = "\x1b[38;5;16;48;5;231m"
_RESET = "\x1b[0m"
# Ink (the text's colour) in the upper half, the lower half, both, neither: one text row
# holds two module rows, so the modules come out square on a terminal's tall cells.
_HALF_BLOCKS = {(True, True): "\u2588", (True, False): "\u2580", (False, True): "\u2584", (False, False): " "}
_ASCII_INK, _ASCII_BLANK = "##", "  "


def symbol(uri: str) -> segno.QRCode:
    """A regular QR code (never a Micro QR, which authenticator apps do not read), in
    the smallest version that holds the URI, with the most error correction that
    version allows: a screen is not torn or smudged, and fewer, larger modules scan
    from further away and keep two copies side by side within 80 columns more often."""
    return segno.make(uri, error="l", boost_error=True, micro=False)


def _inked(uri: str, dark_is_ink: bool) -> list[list[bool]]:
    """The module matrix with its quiet zone: True where the text's colour is drawn,
    the dark modules or (for a dark theme) the light ones and the quiet zone."""
    return [[bool(module) == dark_is_ink for module in row] for row in symbol(uri).matrix_iter(border=TERMINAL_QUIET_ZONE)]


def _half_blocks(rows: list[list[bool]]) -> list[str]:
    if len(rows) % 2:
        rows = [*rows, [rows[-1][0]] * len(rows[0])]  # the lower half of the last text row: more quiet zone
    return ["".join(_HALF_BLOCKS[upper, lower] for upper, lower in zip(rows[i], rows[i + 1])) for i in range(0, len(rows), 2)]


def _ascii(rows: list[list[bool]]) -> list[str]:
    return ["".join(_ASCII_INK if ink else _ASCII_BLANK for ink in row) for row in rows]


def _two_copies(for_light: list[str], for_dark: list[str], columns: int) -> list[str]:
    """Side by side (the light theme's on the left) where both fit `columns`, else one above the other."""
    if 2 * len(for_light[0]) + COPIES_GAP <= columns:
        return [left + " " * COPIES_GAP + right for left, right in zip(for_light, for_dark)]
    return [*for_light, *for_dark]


def block_lines(uri: str, columns: int = TERMINAL_COLUMNS) -> list[str]:
    """Two copies of the QR code as lines of half and full blocks, two module rows a
    line, with no colour: one dark on light on a light theme, the other on a dark
    one (see the module's docstring). Text only (no control character), for a PAM
    conversation, where no escape arrives: OpenSSH's client shows one as text."""
    return _two_copies(_half_blocks(_inked(uri, True)), _half_blocks(_inked(uri, False)), columns)


def terminal_lines(uri: str) -> list[str]:
    """The QR code as lines of colour text: dark on light on any terminal theme.

    Each line sets its colours (black foreground, white background) before its
    first cell and resets them at its end, so it stands alone wherever it is shown.
    """
    return [_COLOURS + line + _RESET for line in _half_blocks(_inked(uri, True))]


def ascii_lines(uri: str, columns: int = TERMINAL_COLUMNS) -> list[str]:
    """Two copies of the QR code in plain ASCII for terminals without block characters,
    as `block_lines` draws them: "##" for an inked module, two spaces for a blank
    one (square modules, one text row a module row, twice as wide as `block_lines`)."""
    return _two_copies(_ascii(_inked(uri, True)), _ascii(_inked(uri, False)), columns)


def png(uri: str) -> bytes:
    buffer = io.BytesIO()
    symbol(uri).save(buffer, kind="png", scale=IMAGE_SCALE, border=IMAGE_QUIET_ZONE)
    return buffer.getvalue()


def svg(uri: str) -> bytes:
    buffer = io.BytesIO()
    symbol(uri).save(buffer, kind="svg", scale=IMAGE_SCALE, border=IMAGE_QUIET_ZONE)
    return buffer.getvalue()
