"""Layers of a quantized (QDQ) network put back into float by editing the graph, to rank layers
for the guarded int8 pass: a layer's weight and bias inputs read the fp32 initializers again, and
its activation input the tensor before its QuantizeLinear (where that is the fp32 graph's tensor).
No re-quantization, so trying one layer costs one ONNX Runtime session (a scan of
EfficientNet-Lite1's 65 layers took 29 s; quantizing once per layer would take minutes).

Why not ONNX Runtime's own `nodes_to_exclude`: an excluded layer still reads a quantized input
(the layer before quantizes its output), so an activation with an outlier stays crushed (the
outlier MLP of the tests: 0.889 with its last layer excluded, against 0.894 all-int8). Where
ONNX Runtime folded a Relu/Clip into a QuantizeLinear's range, the activation is applied again.

The QDQ network and the fp32 network must come from the same graph (ONNX Runtime keeps node names).
"""

from __future__ import annotations

FLOAT_SUFFIX = "__float"


def _remove_dead_nodes(graph) -> None:
    """Drop nodes (Q/DQ of the float layers' old inputs) whose outputs nobody reads."""
    outputs = {o.name for o in graph.output}
    while True:
        used = {name for node in graph.node for name in node.input} | outputs
        dead = [n for n in graph.node if not any(o in used for o in n.output)]
        if not dead:
            return
        for node in dead:
            graph.node.remove(node)


def _op(producers: dict, tensor: str) -> str | None:
    node = producers.get(tensor)
    return None if node is None else node.op_type


class _Editor:
    """Adds fp32 initializers and activation nodes to a copy of a QDQ graph, under new names."""

    def __init__(self, graph, fp32):
        self.graph = graph
        self.float_inits = {i.name: i for i in fp32.graph.initializer}
        self.float_producers = {o: n for n in fp32.graph.node for o in n.output}
        self.have = {i.name for i in graph.initializer} | {o for n in graph.node for o in n.output}

    def initializer(self, name: str) -> str:
        import onnx

        renamed = name + FLOAT_SUFFIX
        if renamed not in self.have:
            init = onnx.TensorProto()
            init.CopyFrom(self.float_inits[name])
            init.name = renamed
            self.graph.initializer.append(init)
            self.have.add(renamed)
        return renamed

    def activation(self, source: str, pre_quantized: str) -> str | None:
        """The fp32 graph's Relu/Clip that made `source`, applied again to `pre_quantized` (the
        tensor ONNX Runtime quantized with the activation folded into its range)."""
        import onnx

        act = self.float_producers.get(source)
        if act is None or act.op_type not in ("Relu", "Clip"):
            return None
        extra = []
        for name in act.input[1:]:
            if name and name not in self.float_inits:
                return None  # bounds computed by other nodes: not worth following
            extra.append(self.initializer(name) if name else "")
        renamed = source + FLOAT_SUFFIX
        if renamed not in self.have:
            node = onnx.helper.make_node(act.op_type, [pre_quantized, *extra], [renamed], name=renamed)
            node.attribute.extend(act.attribute)
            self.graph.node.append(node)
            self.have.add(renamed)
        return renamed


def keep_float(qdq, fp32, layers) -> object:
    """A copy of `qdq` (onnx.ModelProto) in which the nodes named in `layers` compute in float,
    on float inputs. Run it unfused (see the module's docstring)."""
    import onnx

    model = onnx.ModelProto()
    model.CopyFrom(qdq)
    graph = model.graph
    producers = {o: n for n in graph.node for o in n.output}
    float_nodes = {n.name: n for n in fp32.graph.node}
    edit = _Editor(graph, fp32)
    wanted = set(layers)
    for node in list(graph.node):
        if node.name not in wanted or node.name not in float_nodes:
            continue
        original = float_nodes[node.name]
        for k, name in enumerate(node.input):
            dq = producers.get(name)
            if dq is None or dq.op_type != "DequantizeLinear":
                continue
            source = original.input[k] if k < len(original.input) else ""
            if source in edit.float_inits:  # a weight or bias: the fp32 initializer (renamed: the old name may be taken)
                node.input[k] = edit.initializer(source)
                continue
            q = producers.get(dq.input[0])
            if q is None or q.op_type != "QuantizeLinear" or q.input[0] != source:
                continue
            if _op(producers, source) == _op(edit.float_producers, source):
                node.input[k] = source  # the activation before it was quantized
            else:
                # ONNX Runtime folded a Relu/Clip into the QuantizeLinear's range and let the layer
                # before write the activation's name: apply the activation again.
                node.input[k] = edit.activation(source, q.input[0]) or node.input[k]
    _remove_dead_nodes(graph)
    used = {name for node in graph.node for name in node.input}
    kept = [i for i in graph.initializer if i.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    return _sorted(model)


def _sorted(model):
    """Nodes in topological order (activation nodes were appended at the end)."""
    graph = model.graph
    ready = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    pending, ordered = list(graph.node), []
    while pending:
        progressed = False
        for node in list(pending):
            if all(name in ready for name in node.input):
                ordered.append(node)
                ready.update(node.output)
                pending.remove(node)
                progressed = True
        if not progressed:  # leave the rest as they were (the checker will say why)
            ordered.extend(pending)
            break
    del graph.node[:]
    graph.node.extend(ordered)
    return model
