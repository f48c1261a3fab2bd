"""Where the relevance that does not reach the input went (docs/rules-conservation.md).

A node receives relevance at its output and passes some of it down to its inputs; the difference is what it
absorbed: the share of its bias, and of its rule's stabiliser (epsilon), or, negative, what it added. Each tensor's
relevance is counted once as received and once as passed down, so the nodes' absorbed shares add up to
f(x) - sum R: the "conservation error" of a model with biases is no failure but this bookkeeping.
"""

from __future__ import annotations

import math

from lrp_cli.propagate import LayerRecord, Propagation

#: A share below this prints as 0.0 %: no node is named for it.
NEGLIGIBLE = 5e-4


def _share(record: LayerRecord, f_x: float, method: str) -> float | None:
    """Returns (received - passed down) / f(x) of one node, or None where it is not defined."""
    if method != "lrp" or record.relevance_in is None or f_x == 0:
        return None
    return (record.relevance_in - record.relevance_sum) / f_x


def layer_documents(propagation: Propagation, method: str) -> list[dict]:
    """Returns the JSON records of the nodes, output first: name, op, rule, relevance_sum (passed down),
    relevance_in (received) and absorbed, their difference as a fraction of f(x) (None but for LRP)."""
    return [vars(record) | {"absorbed": _share(record, propagation.f_x, method)} for record in propagation.layers]


def summary(propagation: Propagation, method: str) -> dict | None:
    """Returns {"fraction": the share of f(x) all nodes absorbed, "most": {"layer", "fraction"} of the node that
    absorbed most of it}, or None when the shares are not defined (not LRP, f(x) = 0, a BoW pipeline)."""
    shares = [(_share(r, propagation.f_x, method), r.name) for r in propagation.layers]
    if not shares or any(share is None for share, _ in shares):
        return None
    total = math.fsum(share for share, _ in shares)
    sign = -1.0 if total < 0 else 1.0
    share, name = max(shares, key=lambda item: sign * item[0] if math.isfinite(item[0]) else -math.inf)
    return {"fraction": total, "most": {"layer": name, "fraction": share}}


def describe(document: dict) -> str:
    """Returns the printed account of an explanation document's conservation: 'sum R = S of f(x) = F; P %
    absorbed by biases/stabilisers (most in NODE)', or its f(x) and conservation error where no shares are
    known."""
    relevance, f_x = document["relevance"], document["f_x"]
    absorbed = relevance.get("absorbed")
    if absorbed is None or not math.isfinite(absorbed["fraction"]):
        return f"f(x)={f_x:.4g}, conservation error {relevance['conservation_error']:.2e}"
    total, most = absorbed["fraction"], absorbed["most"]
    verb = "added" if total < 0 else "absorbed"
    where = f" (most in '{most['layer']}')" if abs(most["fraction"]) >= NEGLIGIBLE else ""
    return (f"sum R = {relevance['sum']:.4g} of f(x) = {f_x:.4g}; {100 * abs(total):.2f} % {verb} "
            f"by biases/stabilisers{where}")
