"""The ``/etc/hosts`` entry that points ``apiserver.cluster.local`` at the VIP, in a marked block.

Pure text in, text out: the block is replaced in place or appended, every other line is kept
byte for byte, and a name already mapped elsewhere outside the block is an error rather than a
second, silently ignored entry (resolvers take the first match).
"""

from __future__ import annotations

BEGIN = "# BEGIN lvscare (managed by lvscare installer; edits inside this block are lost)"
END = "# END lvscare"
NAME = "apiserver.cluster.local"


class HostsConflict(ValueError):
    pass


def _split(text: str) -> tuple[list[str], list[str] | None, list[str]]:
    lines = text.splitlines(keepends=True)
    starts = [i for i, line in enumerate(lines) if line.rstrip("\r\n") == BEGIN]
    if not starts:
        return lines, None, []
    start = starts[0]
    for end in range(start + 1, len(lines)):
        if lines[end].rstrip("\r\n") == END:
            return lines[:start], lines[start + 1:end], lines[end + 1:]
    return lines[:start], lines[start + 1:], []  # an unterminated block: ours to the end


def _mappings(lines: list[str], name: str) -> set[str]:
    out = set()
    for line in lines:
        fields = line.split("#", 1)[0].split()
        if len(fields) >= 2 and name in fields[1:]:
            out.add(fields[0])
    return out


def with_entry(text: str, ip: str, name: str = NAME) -> str:
    """``text`` with ``ip name`` in lvscare's block; unchanged if it is already there."""
    before, _block, after = _split(text)
    outside = _mappings(before + after, name)
    if outside - {ip}:
        raise HostsConflict(f"{name} already maps to {', '.join(sorted(outside))} outside lvscare's "
                            f"block; remove that line first")
    if ip in outside:
        return without_entry(text)  # already resolvable, and never twice
    block = [BEGIN + "\n", f"{ip} {name}\n", END + "\n"]
    if _block is not None:
        return "".join(before + block + after)
    head = "".join(before)
    if head and not head.endswith("\n"):
        head += "\n"
    return head + "".join(block)


def without_entry(text: str) -> str:
    before, block, after = _split(text)
    if block is None:
        return text
    return "".join(before + after)
