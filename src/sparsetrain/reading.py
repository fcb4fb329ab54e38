"""Every text file sparsetrain reads back (configs, summaries, records) is read here: bounded, strict, one line.

A file that cannot be what it should be raises :class:`ReadError`, whose message is one line naming the file and
what is wrong with it, never a traceback from deep inside a parser:

* only regular files are read (a directory, a FIFO or a device such as ``/dev/zero`` would fail or never end),
  and at most a size limit of them;
* text must be UTF-8;
* JSON must parse (the message gives the line and column);
* YAML is read with ``yaml.SafeLoader`` (no tags that build Python objects) and three more rules: no aliases (a
  "billion laughs" document of a few hundred bytes expands to billions of nodes), no key twice in one mapping
  (YAML would silently keep the last one), and at most :data:`MAX_YAML_DEPTH` levels of nesting.

Checkpoints (binary) are read by :mod:`sparsetrain.checkpoint_io`.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

import yaml

__all__ = ["MAX_JSON_BYTES", "MAX_YAML_BYTES", "MAX_YAML_DEPTH", "ReadError", "load_yaml_text", "read_json",
           "read_text"]

#: Largest YAML document read (a config is a few hundred bytes).
MAX_YAML_BYTES = 1 << 20
#: Largest JSON file read (a summary of a large model with its per-layer reports is a few MB).
MAX_JSON_BYTES = 256 << 20
#: Deepest nesting of YAML collections.
MAX_YAML_DEPTH = 64


class ReadError(ValueError):
    """A file (or text) cannot be read as what it should be; the message is one line naming it."""


def read_text(path: str | os.PathLike[str], *, limit: int = MAX_JSON_BYTES, what: str = "file") -> str:
    """The UTF-8 text of the regular file ``path``.

    Args:
        path: the file.
        limit: the most bytes allowed.
        what: how the message names the file's role, e.g. "config".

    Raises:
        FileNotFoundError: no such file.
        ReadError: not a regular file, larger than ``limit``, or not UTF-8.
        OSError: the file system refused to read it (permission...).
    """
    source = Path(path)
    info = source.stat()
    if not stat.S_ISREG(info.st_mode):
        kind = "a directory" if stat.S_ISDIR(info.st_mode) else "not a regular file"
        raise ReadError(f"{source}: is {kind}, expected a {what} file")
    if info.st_size > limit:
        raise ReadError(f"{source}: {info.st_size} bytes is too large for a {what} file (at most {limit} bytes)")
    with open(source, "rb") as handle:
        data = handle.read(limit + 1)
    if len(data) > limit:  # grew while we read it
        raise ReadError(f"{source}: more than {limit} bytes is too large for a {what} file")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ReadError(f"{source}: not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start}); save the "
                        f"{what} file as UTF-8") from None


def read_json(path: str | os.PathLike[str], *, what: str = "JSON") -> Any:
    """The JSON value of the file ``path`` (read as :func:`read_text`).

    Raises:
        FileNotFoundError, ReadError, OSError: as :func:`read_text`; ReadError also for text that is not JSON.
    """
    text = read_text(path, limit=MAX_JSON_BYTES, what=what)
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ReadError(f"{path}: not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}") from None
    except RecursionError:
        raise ReadError(f"{path}: not valid JSON: nested too deeply") from None


class _BoundedLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` without aliases or duplicate keys, and with a depth limit."""

    source = "YAML"

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise ReadError(f"{self.source}: aliases are not allowed (*{event.anchor} at line "
                            f"{event.start_mark.line + 1}); write the value out")
        self._depth += 1
        try:
            if self._depth > MAX_YAML_DEPTH:
                mark = self.peek_event().start_mark
                raise ReadError(f"{self.source}: nested more than {MAX_YAML_DEPTH} levels deep (at line "
                                f"{mark.line + 1})")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        if isinstance(node, yaml.MappingNode):
            seen: set[Any] = set()
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=True)
                try:
                    duplicate = key in seen
                except TypeError:  # an unhashable key: the base class explains it
                    break
                if duplicate:
                    raise ReadError(f"{self.source}: duplicate key {key!r} at line {key_node.start_mark.line + 1}; "
                                    "each key may appear once in a mapping")
                seen.add(key)
        return super().construct_mapping(node, deep)


def load_yaml_text(text: str, source: str = "YAML") -> Any:
    """Parse ``text`` as one YAML document with the rules of this module.

    Args:
        text: the YAML text.
        source: how messages name it (a file name).

    Raises:
        ReadError: larger than :data:`MAX_YAML_BYTES`, an alias, a duplicate key, nested too deeply, or not valid
            YAML (line and column given).
    """
    if len(text) > MAX_YAML_BYTES:
        raise ReadError(f"{source}: {len(text)} characters is too large for YAML here (at most {MAX_YAML_BYTES})")
    loader = None
    try:
        loader = _BoundedLoader(text)  # the reader refuses characters YAML does not allow (NUL, ...) here
        loader.source = source
        return loader.get_single_data()
    except yaml.YAMLError as exc:
        problem = getattr(exc, "problem", None)
        mark = getattr(exc, "problem_mark", None)
        if problem and mark is not None:
            first = f"{problem} at line {mark.line + 1}, column {mark.column + 1}"
        else:
            first = " ".join(str(exc).split())
        raise ReadError(f"{source}: not valid YAML: {first}") from None
    except RecursionError:
        raise ReadError(f"{source}: not valid YAML: nested too deeply") from None
    finally:
        if loader is not None:
            loader.dispose()
