"""Affine unit conversion into a site's canonical units (pint does the physics).

Which unit is canonical for a parameter is the site's choice (`sources.site`), never built in.

Every conversion is `canonical = value * scale + offset` (offset is non-zero only for
temperatures), so DuckDB can apply it inside SQL without per-row Python. A unit pint cannot
convert to the parameter's canonical unit is a validation failure, never a guess.
"""

from __future__ import annotations

import functools

import pint


class UnitError(ValueError):
    pass


@functools.cache
def registry() -> pint.UnitRegistry:
    """The one pint registry, built once, with the units lab and historian data use that pint
    lacks (pH, cells, osmoles); an offset unit (degC) in a product becomes its base unit."""
    ureg: pint.UnitRegistry = pint.UnitRegistry(autoconvert_offset_to_baseunit=True)
    ureg.define("pH = [acidity]")  # a unit of its own: pH converts only to pH
    ureg.define("cell = [cell_count] = cells")
    ureg.define("osmole = mole = Osm")
    return ureg


def _parse(uom: str):
    ureg = registry()
    text = uom.strip().replace("mmol/L", "mM").replace("µ", "u")
    return ureg.Quantity(text) if text[:1].isdigit() else ureg.Quantity(1.0, text)


@functools.cache
def conversion(uom: str, canonical: str) -> tuple[float, float]:
    """(scale, offset) with canonical = value * scale + offset; UnitError if not convertible."""
    if uom.strip() == canonical.strip():
        return 1.0, 0.0
    try:
        src, dst = _parse(uom), _parse(canonical)
        ureg = registry()
        zero = ureg.Quantity(0.0 * src.magnitude, src.units).to(dst.units).magnitude / dst.magnitude
        one = ureg.Quantity(1.0 * src.magnitude, src.units).to(dst.units).magnitude / dst.magnitude
    except (pint.errors.PintError, ValueError, AttributeError) as err:
        raise UnitError(f"cannot convert {uom!r} to {canonical!r}: {err}") from None
    return float(one - zero), float(zero)


def check_unit(uom: str) -> None:
    """UnitError unless pint understands `uom`."""
    try:
        _parse(uom)
    except Exception as err:  # noqa: BLE001 - pint fails on garbage with many error types
        raise UnitError(f"{uom!r} is not a unit pint knows ({type(err).__name__})") from None
