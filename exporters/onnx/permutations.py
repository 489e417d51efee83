"""Fold constant channel permutations (ShuffleNet's channel shuffle) into the convolutions after them.

A channel shuffle only renames channels: the next 1x1 convolution can read its input channels in
any order if its weight columns are reordered to match.  ShuffleNetV2's units pass half of every
tensor through untouched, so a shuffle cannot be dropped locally; this pass instead tracks, for
every tensor made only of channel Gathers, Splits and Concats, which channel of which real tensor
each of its channels is (a *view*), and materialises a view only where a real op needs it:

- a dense convolution (``group=1``) or a Gemm reads the view's channels as a concatenation of
  contiguous pieces of their real tensors (one Split per tensor), in source order, and gets its
  weights reordered to match;
- a depthwise convolution, an activation, a pooling or a reduction over the spatial axes runs on
  that same concatenation (with its per-channel parameters reordered), and its output is a view again;
- any other consumer (and a graph output) gets the exact channel order: the concatenation, then a
  Gather only if the order still differs.

On ShuffleNetV2 every unit's shuffle disappears: each unit's branch reads a Concat of a few slices
of earlier branch outputs.  The values equal the original graph's up to the order of the
convolutions' float sums (docs/measurements.md#openvino-shuffle-fold).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

from lightdeploy.exporters.onnx.graph import graph_constants, names_read, node_attributes, static_shapes

MOVES = frozenset({"Gather", "Split", "Concat"})  # ops that only move channels
# Ops that act on each channel alone, with no per-channel parameters: they commute with a permutation.
ELEMENTWISE = frozenset({"Relu", "LeakyRelu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Elu", "Identity"})

POOLS = frozenset({"MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool"})
REDUCES = frozenset({"ReduceMean", "ReduceMax", "ReduceMin", "ReduceSum"})  # over axes other than 0 and 1

Channel = tuple[str, int]  # (real tensor, channel index)


@dataclass
class _Rewriter:
    """One pass over the graph in order: views recorded, real nodes emitted into ``nodes``."""

    consts: dict
    shapes: dict
    views: dict[str, list[Channel]] = field(default_factory=dict)
    nodes: list = field(default_factory=list)
    inits: list = field(default_factory=list)
    outputs: set = field(default_factory=set)  # the graph's outputs keep their names
    consumers: dict = field(default_factory=dict)  # tensor name -> op types reading it
    made: dict = field(default_factory=dict)  # cache: slice / concat key -> tensor name
    names: set = field(default_factory=set)
    gathers: dict = field(default_factory=dict)  # view name -> its Gather of a real tensor (None once emitted)
    cuts: dict | None = None  # source -> channel boundaries its Split needs (None: the first pass)
    wanted: dict = field(default_factory=dict)  # the first pass's record of them
    counts: dict = field(default_factory=lambda: {"gathers_removed": 0, "convs_folded": 0, "exact_gathers": 0})

    # ------------------------------------------------------------------------------ views
    def channels(self, name: str) -> int | None:
        shape = self.shapes.get(name)
        return shape[1] if shape is not None and len(shape) >= 2 else None

    def is_channel_axis(self, axis: int, name: str) -> bool:
        shape = self.shapes.get(name)
        return shape is not None and len(shape) >= 2 and axis in (1, 1 - len(shape))

    def view_of(self, name: str) -> list[Channel] | None:
        if name in self.views:
            return self.views[name]
        c = self.channels(name)
        return None if c is None else [(name, i) for i in range(c)]

    def try_view(self, node) -> bool:
        """Record ``node``'s output as a view when it only moves channels; False to keep the node."""
        attrs = node_attributes(node)
        op = node.op_type
        if op == "Gather" and self.is_channel_axis(attrs.get("axis", 0), node.input[0]):
            index = self.consts.get(node.input[1])
            source = self.view_of(node.input[0])
            if index is None or index.ndim != 1 or source is None:
                return False
            if index.size == 0 or index.min() < -len(source) or index.max() >= len(source):
                return False
            self.views[node.output[0]] = [source[int(i)] for i in index]
            if node.input[0] not in self.views:
                self.gathers[node.output[0]] = node  # re-emitted as it is if a consumer needs it exactly
            self.counts["gathers_removed"] += 1
            return True
        if op == "Split" and node.input[0] in self.views and self.is_channel_axis(attrs.get("axis", 0), node.input[0]):
            source = self.views[node.input[0]]
            sizes = self._split_sizes(node, attrs, len(source))
            if sizes is None:
                return False
            start = 0
            for out, size in zip(node.output, sizes):
                self.views[out] = source[start : start + size]
                start += size
            return True
        # A Concat of real tensors becomes a view only when nothing but channel moves read it.
        moved_only = all(t in MOVES for t in self.consumers.get(node.output[0], ["?"]))
        if (
            op == "Concat"
            and self.is_channel_axis(attrs.get("axis"), node.input[0])
            and (moved_only or any(i in self.views for i in node.input))
        ):
            parts = [self.view_of(i) for i in node.input]
            if any(p is None for p in parts):
                return False
            self.views[node.output[0]] = [ch for p in parts for ch in p]
            return True
        return False

    def _split_sizes(self, node, attrs, total: int) -> list[int] | None:
        if len(node.input) > 1 and node.input[1]:
            sizes = self.consts.get(node.input[1])
            return None if sizes is None else [int(s) for s in sizes]
        if "split" in attrs:
            return [int(s) for s in attrs["split"]]
        parts = attrs.get("num_outputs", len(node.output))
        if total % parts:
            return None
        return [total // parts] * parts

    # ------------------------------------------------------------------------------ materialising
    def compact(self, view: list[Channel], like) -> tuple[str, list[Channel]]:
        """A real tensor holding the view's distinct channels, each source's in ascending runs; and
        its channel list (what each of its channels is)."""
        sources: dict[str, set[int]] = {}
        for src, ch in view:
            sources.setdefault(src, set()).add(ch)
        pieces, physical = [], []
        for src, chans in sources.items():
            ordered = sorted(chans)
            physical += [(src, c) for c in ordered]
            run_start = ordered[0]
            for prev, cur in zip(ordered, [*ordered[1:], None]):
                if cur != prev + 1:
                    pieces += self._pieces(src, run_start, prev + 1, like)
                    run_start = cur
        if len(pieces) == 1:
            return pieces[0], physical
        key = ("concat", tuple(pieces))
        if key not in self.made:
            name = self._fresh(like, "concat")
            self._emit(like, "Concat", pieces, [name], axis=1)
            self.shapes[name] = (None, len(physical), None, None)
            self.made[key] = name
        return self.made[key], physical

    def _pieces(self, src: str, start: int, stop: int, like) -> list[str]:
        """Channels [start, stop) of ``src`` as consecutive pieces of one Split of ``src``.

        One Split per source, cut at every boundary any consumer needs (``cuts``, from a first pass),
        rather than a Slice per run: OpenVINO runs it as one VariadicSplit, and NNCF quantises the
        source once before it (it places a FakeQuantize after every Slice)."""
        import numpy as np

        if self.cuts is None:  # first pass: only record the boundaries
            self.wanted.setdefault(src, set()).update((start, stop))
            return [src]
        cuts = sorted(self.cuts[src] | {0, self.channels(src)})
        if len(cuts) == 2:
            return [src]
        if ("split", src) not in self.made:
            names = [self._fresh(like, "split") for _ in cuts[1:]]
            sizes = self._const(like, np.diff(cuts).astype(np.int64))
            self._emit(like, "Split", [src, sizes], names, axis=1)
            for name, a, b in zip(names, cuts, cuts[1:]):
                self.made[("piece", src, a)] = name
                self.shapes[name] = (None, b - a, None, None)
            self.made[("split", src)] = True
        return [self.made[("piece", src, a)] for a in cuts[cuts.index(start) : cuts.index(stop)]]

    def exact(self, view: list[Channel], like) -> str:
        """A real tensor with exactly the view's channels in the view's order."""
        import numpy as np

        name, physical = self.compact(view, like)
        where = {ch: i for i, ch in enumerate(physical)}
        index = np.array([where[ch] for ch in view], np.int64)
        if len(index) == len(physical) and np.array_equal(index, np.arange(len(index))):
            return name
        out = self._fresh(like, "gather")
        self._emit(like, "Gather", [name, self._const(like, index)], [out], axis=1)
        self.counts["exact_gathers"] += 1
        return out

    # ------------------------------------------------------------------------------ consumers
    def rewrite(self, node) -> None:
        """Emit ``node`` reading real tensors in place of its views."""
        virtual = [i for i, name in enumerate(node.input) if name in self.views]
        if not virtual:
            self.nodes.append(node)
            return
        if virtual == [0]:
            if node.op_type == "Conv" and self._conv(node):
                return
            if node.op_type == "Gemm" and self._gemm(node):
                return
            if self._per_channel(node) and self._propagate(node, {}):
                return
        for i in virtual:
            name = node.input[i]
            if name in self.gathers:  # a Gather of a real tensor: the original node is what is needed
                if self.gathers[name] is not None:
                    self.nodes.append(self.gathers[name])
                    self.gathers[name] = None  # emitted
                    self.counts["gathers_removed"] -= 1
                continue
            node.input[i] = self.exact(self.views[name], node)
        self.nodes.append(node)

    def _conv(self, node) -> bool:
        group = node_attributes(node).get("group", 1)
        weight = self.consts.get(node.input[1])
        view = self.views[node.input[0]]
        if weight is None or weight.ndim != 4:
            return False
        if group == 1 and weight.shape[1] == len(view):
            node.input[0], folded = self._fold_columns(weight, view, node)
            node.input[1] = self._const(node, folded)
            self.nodes.append(node)
            self.counts["convs_folded"] += 1
            return True
        if group == len(view) == weight.shape[0] and weight.shape[1] == 1:  # depthwise
            return self._propagate(
                node, {1: weight, 2: self.consts.get(node.input[2]) if len(node.input) > 2 else None}
            )
        return False

    def _gemm(self, node) -> bool:
        """A Gemm reading a [N, C] view: its weight's C axis reordered (as ``_conv``'s columns)."""
        attrs = node_attributes(node)
        weight, view = self.consts.get(node.input[1]), self.views[node.input[0]]
        if attrs.get("transA", 0) or weight is None or weight.ndim != 2:
            return False
        columns = weight if attrs.get("transB", 0) else weight.T  # [out, C]
        if columns.shape[1] != len(view):
            return False
        node.input[0], folded = self._fold_columns(columns, view, node)
        node.input[1] = self._const(node, folded if attrs.get("transB", 0) else folded.T.copy())
        self.nodes.append(node)
        self.counts["convs_folded"] += 1
        return True

    def _fold_columns(self, weight, view: list[Channel], like):
        """(the compact tensor of ``view``, ``weight`` [out, len(view), ...] with its input axis laid out
        as that tensor's channels; the columns of a repeated channel are added)."""
        import numpy as np

        name, physical = self.compact(view, like)
        where = {ch: i for i, ch in enumerate(physical)}
        folded = np.zeros((weight.shape[0], len(physical), *weight.shape[2:]), weight.dtype)
        for j, ch in enumerate(view):
            folded[:, where[ch]] += weight[:, j]
        return name, folded

    def _per_channel(self, node) -> bool:
        """Whether ``node`` treats each channel alone, with no parameters of its own per channel."""
        if node.op_type in POOLS:
            return len(node.output) == 1  # MaxPool's indices count channels
        if node.op_type in ELEMENTWISE:
            return True
        if node.op_type not in REDUCES:
            return False
        shape = self.shapes.get(node.input[0])
        axes = node_attributes(node).get("axes")
        if axes is None and len(node.input) > 1 and node.input[1]:
            axes = self.consts.get(node.input[1])
        if axes is None or shape is None or len(axes) == 0:
            return False  # no axes: every axis, the channels too
        return all(int(a) % len(shape) > 1 for a in axes)  # batch and channel axes kept

    def _propagate(self, node, per_channel: dict) -> bool:
        """Run a per-channel op on the compact tensor; its output becomes a view of the result."""
        view = self.views[node.input[0]]
        if node.output[0] in self.outputs:
            return False  # a graph output keeps its name and order
        if per_channel and len(set(view)) != len(view):
            return False  # a repeated channel would need two different parameters
        if any(v is None for k, v in per_channel.items() if k < 2):
            return False
        name, physical = self.compact(view, node)
        order = [view.index(ch) for ch in physical]  # the logical channel behind each physical one
        node.input[0] = name
        for i, value in per_channel.items():
            if value is not None:
                node.input[i] = self._const(node, value[order])
        real = self._fresh(node, "out")
        logical = node.output[0]
        node.output[0] = real
        self.nodes.append(node)
        where = {ch: i for i, ch in enumerate(physical)}
        self.views[logical] = [(real, where[ch]) for ch in view]
        self.shapes[real] = self.shapes.get(logical)
        return True

    # ------------------------------------------------------------------------------ emitting
    def _fresh(self, like, what: str) -> str:
        base = f"{like.name or like.output[0]}/channel_fold/{what}"
        name, n = base, 0
        while name in self.names:
            n += 1
            name = f"{base}_{n}"
        self.names.add(name)
        return name

    def _const(self, like, value) -> str:
        from onnx import numpy_helper

        name = self._fresh(like, "const")
        self.inits.append(numpy_helper.from_array(value, name))
        return name

    def _emit(self, like, op: str, inputs: list[str], outputs: list[str], **attrs) -> None:
        from onnx import helper

        node = helper.make_node(op, inputs, outputs, name=outputs[0], **attrs)
        node.metadata_props.extend(like.metadata_props)  # keeps the module path for localisation
        self.nodes.append(node)


def fold_channel_permutations(model) -> dict:
    """Rewrite ``model`` (an ONNX ModelProto) in place as the module docstring says; return counts
    (``gathers_removed``: channel Gathers gone; ``convs_folded``; ``exact_gathers``: Gathers left
    where a consumer needs the exact order).  A graph without channel Gathers is left unchanged."""
    rw = _fold(model)
    if rw is None or rw.counts["gathers_removed"] == 0:
        return rw.counts if rw else {"gathers_removed": 0, "convs_folded": 0, "exact_gathers": 0}
    del model.graph.node[:]
    model.graph.node.extend(rw.nodes)
    model.graph.initializer.extend(rw.inits)
    _drop_unused(model)
    return rw.counts


def removed_tensors(model) -> dict[str, list[Channel]]:
    """What ``fold_channel_permutations`` would do to ``model`` (not changed), read backwards: for each
    tensor of ``model`` that the folded graph no longer has, the (tensor, channel) of the folded graph
    holding each of its channels.  Fault localisation rebuilds those tensors from the folded IR."""
    folded = copy.deepcopy(model)
    rw = _fold(folded)
    if rw is None:
        return {}
    kept = {o for n in rw.nodes for o in n.output}
    return {name: view for name, view in rw.views.items() if name not in kept}


def _fold(model) -> _Rewriter | None:
    if not any(n.op_type == "Gather" for n in model.graph.node):
        return None
    consts = graph_constants(model.graph)
    outputs = {o.name for o in model.graph.output}
    consumers: dict = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node.op_type)
    first = _rewrite(copy.deepcopy(model), consts, outputs, consumers, cuts=None)
    return _rewrite(model, consts, outputs, consumers, cuts=first.wanted)


def _rewrite(model, consts, outputs, consumers, cuts) -> _Rewriter:
    rw = _Rewriter(consts, dict(static_shapes(model)), outputs=outputs, consumers=consumers, cuts=cuts)
    for node in model.graph.node:
        if not (set(node.output) & outputs) and rw.try_view(node):
            continue
        rw.rewrite(node)
    return rw


def _drop_unused(model) -> None:
    used = names_read(model.graph)
    keep = [t for t in model.graph.initializer if t.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep)
    produced = {o for n in model.graph.node for o in n.output}
    keep_info = [v for v in model.graph.value_info if v.name in produced]
    del model.graph.value_info[:]
    model.graph.value_info.extend(keep_info)
