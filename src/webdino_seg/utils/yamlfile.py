"""YAML read strictly: safe types only, a key given twice is an error (PyYAML keeps the last silently), and
numbers such as ``1e-3`` are floats as in YAML 1.2 (PyYAML's YAML 1.1 reads them as strings)."""

from __future__ import annotations

import re

import yaml


class DuplicateKeyError(yaml.YAMLError):
    """A mapping that names one key twice."""


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys and reads YAML 1.2 floats."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # <<: an anchor's keys, which the mapping may override
                continue
            key, line = self.construct_object(key_node, deep=True), key_node.start_mark.line + 1
            try:
                if key in seen:
                    raise DuplicateKeyError(
                        f"key {key!r} on line {line} is given again (first on line {seen[key]}); give each key once"
                    )
                seen[key] = line
            except TypeError:  # an unhashable key: SafeLoader's own error follows
                continue
        return super().construct_mapping(node, deep=deep)


# YAML 1.2's float, which also reads 1e-3, 1E5 and 2.5e+4 (YAML 1.1 needs a dot and a signed exponent)
_FLOAT = re.compile(
    r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
    |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""",
    re.X,
)


class _Dumper(yaml.SafeDumper):
    """SafeDumper that quotes what `load` would read as a float (a class named ``1e5`` stays a string)."""


for _cls in (_StrictLoader, _Dumper):
    _cls.yaml_implicit_resolvers = {
        first: [(tag, regex) for tag, regex in resolvers if tag != "tag:yaml.org,2002:float"]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }
    _cls.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT, list("-+0123456789."))


def load(text: str) -> object:
    """The data in one YAML document; `yaml.YAMLError` (a `DuplicateKeyError` for a key given twice) when it is
    not valid."""
    return yaml.load(text, Loader=_StrictLoader)  # a SafeLoader subclass


def dump(data: object) -> str:
    """`data` as YAML that `load` reads back as it is (keys in their order)."""
    return yaml.dump(data, Dumper=_Dumper, sort_keys=False)
