"""What the viewer computes, as plain functions of a model, SAEs and collated data: the unit table, logit lens,
live probe, steering, neighbours, search by inference and debugger requests. The viewer's routes parse a request,
call one of these and serialise the answer; `saescope search` prints `search`'s.

Bad input raises `SaescopeError` (the viewer: 400), a unit or dataset that is not there `NotFoundError` (404).
Light on import (no torch): the names below load their module on first use.
"""

from typing import TYPE_CHECKING

from saescope.lazy import lazy_package

_NAMES = {
    **dict.fromkeys(("DEBUG_MAX_TOKENS", "debug_request"), "saescope.explore.debugging"),
    **dict.fromkeys(("unit_lens",), "saescope.explore.lens"),
    **dict.fromkeys(("coactive", "decoder_neighbours", "latent_neighbours"), "saescope.explore.neighbours"),
    **dict.fromkeys(("probe",), "saescope.explore.probing"),
    **dict.fromkeys(("MAX_DENSITY", "SearchSource", "search", "search_source"), "saescope.explore.searching"),
    **dict.fromkeys(("steer",), "saescope.explore.steering"),
    **dict.fromkeys(("TableQuery", "unit_table"), "saescope.explore.table"),
}
__all__ = lazy_package(__name__, _NAMES)

if TYPE_CHECKING:  # pragma: no cover
    from saescope.explore.debugging import DEBUG_MAX_TOKENS, debug_request
    from saescope.explore.lens import unit_lens
    from saescope.explore.neighbours import coactive, decoder_neighbours, latent_neighbours
    from saescope.explore.probing import probe
    from saescope.explore.searching import MAX_DENSITY, SearchSource, search, search_source
    from saescope.explore.steering import steer
    from saescope.explore.table import TableQuery, unit_table
