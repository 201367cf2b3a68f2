"""Which mark values markroute may use inside its mask, and which it keeps for itself.

markroute owns only the bits of `settings.mark_mask`; every value it writes is a
multiple of the mask's lowest bit, so masked compares (`fwmark V/M`, `ct mark and M`)
never see bits that belong to other software.
"""

from __future__ import annotations

from collections.abc import Iterator

# Marks other software is known to set: (who, value, the bits its own rules compare).
# A user that compares the whole mark is hurt only if a packet it marked reads as one of
# our values under our mask; a user that owns a masked field is hurt if we write its bits.
KNOWN_MARK_USERS = (
    ("wg-quick", 0xCA6C, 0xFFFFFFFF),
    ("Tailscale", 0x80000, 0xFF0000),
    ("Docker swarm", 0x105, 0xFFFFFFFF),
)


def foreign_values(mask: int) -> dict[int, str]:
    """Values of our field that whole-mark users' packets carry; never allocate them."""
    return {
        value & mask: who
        for who, value, their_mask in KNOWN_MARK_USERS
        if their_mask == 0xFFFFFFFF and value & mask
    }


def field_overlaps(mask: int) -> list[tuple[str, int]]:
    """Masked-field users whose bits overlap ours: every write of ours changes their field."""
    return [(who, their_mask) for who, _, their_mask in KNOWN_MARK_USERS if their_mask != 0xFFFFFFFF and mask & their_mask]


def is_contiguous(mask: int) -> bool:
    if mask == 0:
        return False
    low = mask & -mask
    return (mask + low) & mask == 0


def shift(mask: int) -> int:
    return (mask & -mask).bit_length() - 1


def capacity(mask: int) -> int:
    """How many distinct non-zero values fit in the mask."""
    return mask >> shift(mask)


def value(mask: int, index: int) -> int:
    return index << shift(mask)


def unreachable_mark(mask: int) -> int:
    """The top value of the mask: traffic with it hits markroute's `unreachable` rule."""
    return value(mask, capacity(mask))


def blackhole_mark(mask: int) -> int:
    return value(mask, capacity(mask) - 1)


def uplink_marks(mask: int) -> range:
    """The values left for uplinks once the two reserved ones are set aside."""
    return range(1, capacity(mask) - 1)


def mask_overlaps(mask: int) -> Iterator[tuple[str, str]]:
    """(message, hint) for other software's marks that this mask would overwrite or misread."""
    for who, bits in field_overlaps(mask):
        yield (
            f"mark_mask {mask:#x} overlaps the mark bits {bits:#x} used by {who}",
            "if it runs here, pick mark_mask bits it does not use, e.g. 0xff00",
        )
    foreign = foreign_values(mask)
    reserved = {unreachable_mark(mask): "unreachable", blackhole_mark(mask): "blackhole"}
    for value, action in reserved.items():
        if value in foreign:
            yield (
                f"packets marked by {foreign[value]} read as markroute's {action} mark {value:#x} "
                f"under mark_mask {mask:#x}; they would be dropped",
                "if it runs here, pick other mark_mask bits, e.g. 0xff00",
            )
