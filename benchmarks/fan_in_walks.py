"""Graph walks stay linear: N BatchNormalization layers feeding one shared chain of N
Identity layers (a fan-in) is audited in about the time of an N-layer chain.

Before BN104's output check was computed once per graph, the fan-in re-walked the
chain for every BN (N=4000: 26 s). Prints both times and their ratio.

    python benchmarks/fan_in_walks.py [N]
"""

from __future__ import annotations

import sys
import time

from bnaudit.engine import AuditOptions, Auditor
from bnaudit.graph import build_graph
from bnaudit.selection import Selection


def _layer(name: str, class_name: str, inputs: list[str], **config) -> dict:
    args = [{"class_name": "__keras_tensor__", "config": {"shape": [None, 4], "dtype": "float32", "keras_history": [i, 0, 0]}} for i in inputs]
    return {"module": "keras.layers", "class_name": class_name, "name": name, "config": {"name": name, **config}, "inbound_nodes": [{"args": args if len(args) != 1 else args, "kwargs": {}}] if inputs else []}


def fan_in(n: int) -> dict:
    """``n`` layers: n/2 BNs on one input, added, then a chain of n/2 Identity layers to the output."""
    half = n // 2
    layers = [_layer("x", "InputLayer", [], batch_shape=[None, 4])]
    layers += [_layer(f"bn_{i}", "BatchNormalization", ["x"], axis=-1) for i in range(half)]
    layers.append(_layer("sum", "Add", [f"bn_{i}" for i in range(half)]))
    previous = "sum"
    for i in range(half):
        layers.append(_layer(f"id_{i}", "Identity", [previous]))
        previous = f"id_{i}"
    return _model(layers, previous)


def chain(n: int) -> dict:
    """``n`` BNs one after another."""
    layers = [_layer("x", "InputLayer", [], batch_shape=[None, 4])]
    previous = "x"
    for i in range(n):
        layers.append(_layer(f"bn_{i}", "BatchNormalization", [previous], axis=-1))
        previous = f"bn_{i}"
    return _model(layers, previous)


def _model(layers: list[dict], output: str) -> dict:
    return {"class_name": "Functional", "config": {"name": "m", "layers": layers, "input_layers": [["x", 0, 0]], "output_layers": [[output, 0, 0]]}}


def seconds(config: dict, auditor: Auditor) -> float:
    """Graph building plus every static placement rule (BN1xx), as ``bnaudit check`` runs them."""
    started = time.perf_counter()
    graph = build_graph(config)
    result_rules = [r for r in auditor.selected_rules() if "weights" not in r.needs]
    from bnaudit.context import RuleContext
    from bnaudit.result import AuditResult

    result = AuditResult("bench")
    for rule in result_rules:
        list(rule.check(RuleContext("bench", graph, rule, {}, result, lambda: None)) or [])
    return time.perf_counter() - started


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 20000
    auditor = Auditor(AuditOptions(selection=Selection(("BN1",))))
    chained, fanned = seconds(chain(n), auditor), seconds(fan_in(n), auditor)
    print(f"N={n}: a chain of {n} BNs {chained:.2f} s; {n // 2} BNs into one shared chain of {n // 2} Identity layers {fanned:.2f} s; ratio {fanned / chained:.2f}")


if __name__ == "__main__":
    main()
