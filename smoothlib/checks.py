"""How a setting is checked and how its error is worded, for every setting of smoothlib.

One wording everywhere, with the name the caller knows the setting by: the
trainer's flag (``--reg-every must be an integer >= 1, got 0``) or the Python
argument (``every must be an integer >= 1, got 0``).
"""
from __future__ import annotations

import math
import numbers


def check_number(value, label: str, low, *, below=None, at_most=None, exclusive: bool = False,
                 integer: bool = False, optional: bool = False) -> None:
    """Raise ValueError unless ``value`` is a finite number (an int if ``integer``) in range.

    The range is ``value >= low`` (``> low`` if ``exclusive``), and ``value < below``
    or ``value <= at_most`` when given; ``optional`` also accepts None.
    """
    if optional and value is None:
        return
    kind = "an integer" if integer else "a finite number"
    opening = "(" if exclusive else "["
    bounds = (f"in {opening}{low}, {below})" if below is not None else
              f"in {opening}{low}, {at_most}]" if at_most is not None else
              f"> {low}" if exclusive else f">= {low}")
    ok = isinstance(value, numbers.Integral if integer else numbers.Real) and not isinstance(value, bool)
    ok = ok and math.isfinite(value) and (value > low if exclusive else value >= low)
    ok = ok and (below is None or value < below) and (at_most is None or value <= at_most)
    if not ok:
        raise ValueError(f"{label} must be {kind} {bounds}{' (or none)' if optional else ''}, got {value!r}")


def check_choice(value, label: str, choices) -> None:
    """Raise ValueError unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise ValueError(f"{label} must be one of {', '.join(map(str, choices))}; got {value!r}")
