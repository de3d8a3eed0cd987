#!/usr/bin/env python3
"""Write the fuzzer's seed corpus from docs/protocol.md's "Test vectors".

    seeds.py docs/protocol.md DIR

Each vector becomes DIR/vector-N (the whole frame) and, for frames with a
payload, DIR/vector-N-payload (the payload alone, for the bare-payload parse).
Taken from the document, not copied, so the seeds follow the shared vectors.
"""

import re
import sys
from pathlib import Path


def vectors(doc: str) -> list[bytes]:
    section = doc.split("## Test vectors", 1)[1]
    return [bytes.fromhex(text.replace(" ", "")) for text in re.findall(r"`([0-9a-f]{4}(?: ?[0-9a-f]{2,})+)`", section)]


def main() -> int:
    doc, out = Path(sys.argv[1]), Path(sys.argv[2])
    found = vectors(doc.read_text(encoding="utf-8"))
    if len(found) < 4:
        print(f"{doc}: found {len(found)} test vectors, expected at least 4", file=sys.stderr)
        return 1
    out.mkdir(parents=True, exist_ok=True)
    for i, frame in enumerate(found, 1):
        (out / f"vector-{i}").write_bytes(frame)
        if len(frame) > 8:
            (out / f"vector-{i}-payload").write_bytes(frame[8:])
    return 0


if __name__ == "__main__":
    sys.exit(main())
