"""The one YAML reader of editgen (--config, profiles, --set values, OUT/config.yaml, --storage-option).

`yaml.safe_load` builds no objects, but it still shares aliased nodes: a 500-byte "billion laughs"
document (`b: &b [*a, *a, ...]`, nine levels deep) loads in a millisecond as a few shared lists, and
only explodes later, when the config is validated, hashed or written back (MemoryError after 87 s).
So the composer counts what aliases would expand to and refuses a document past a small bound, and
bounds nesting depth (a deeply nested document would end in RecursionError instead of one line).

Numbers: YAML 1.1 reads `1e-5` (no dot) as a string. With strict number types in the schema that
would refuse a plainly numeric setting, so exponent floats without a dot are read as floats here.
"""

from __future__ import annotations

import re
from typing import Any

import yaml
from yaml.composer import ComposerError
from yaml.events import AliasEvent
from yaml.nodes import MappingNode, Node, SequenceNode

#: Nodes that aliases may add to a document by expansion (a config that shares one `resources:` block
#: a few times adds tens); past it the document is refused.
MAX_ALIAS_NODES = 10_000
#: Nesting depth of any YAML editgen reads (its configs are a few levels deep).
MAX_DEPTH = 64
_EXP_FLOAT = re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$")


class YamlBombError(ComposerError):
    """A document whose aliases expand past MAX_ALIAS_NODES, refer to themselves, or nest too deep."""


class BoundedLoader(yaml.SafeLoader):
    """SafeLoader that sizes every node as it is composed (its expanded size, aliases included, in
    one bottom-up pass: no alias is ever walked twice) and refuses alias expansion beyond a bound."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._sizes: dict[int, int] = {}
        self._aliased = 0
        self._depth = 0

    def compose_node(self, parent: Node | None, index: object) -> Node | None:
        if self.check_event(AliasEvent):
            event = self.peek_event()
            target = self.anchors.get(event.anchor)
            if target is not None:  # an undefined alias is PyYAML's own error
                size = self._sizes.get(id(target))
                if size is None:
                    raise YamlBombError(None, None, f"alias *{event.anchor} refers to a node that contains it",
                                        event.start_mark)
                self._aliased += size
                if self._aliased > MAX_ALIAS_NODES:
                    raise YamlBombError(None, None, f"aliases expand to more than {MAX_ALIAS_NODES} values "
                                        "(a YAML alias bomb?); write repeated values out", event.start_mark)
            return super().compose_node(parent, index)
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise YamlBombError(None, None, f"nested deeper than {MAX_DEPTH} levels", self.peek_event().start_mark)
            node = super().compose_node(parent, index)
        finally:
            self._depth -= 1
        self._sizes[id(node)] = 1 + sum(self._sizes[id(child)] for child in _children(node))
        return node


def _children(node: Node) -> list[Node]:
    if isinstance(node, SequenceNode):
        return list(node.value)
    if isinstance(node, MappingNode):
        return [n for pair in node.value for n in pair]
    return []


BoundedLoader.add_implicit_resolver("tag:yaml.org,2002:float", _EXP_FLOAT, list("-+0123456789."))


def load(text: str) -> Any:
    """Parse one YAML document (yaml.YAMLError on bad YAML; YamlBombError, a YAMLError, on a bomb)."""
    loader = BoundedLoader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()
