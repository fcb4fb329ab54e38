"""A name registry whose entries declare their options in their own signatures.

The dataset loaders (:mod:`sparsetrain.data.registry`) and the model builders (:mod:`sparsetrain.models.registry`)
are both functions registered under a name with a decorator; each takes a few arguments every entry of its
registry takes (``reserved``: ``data_dir``, ``cache_dir``, ``seed`` for a loader) and, as keywords with defaults,
its own options. :class:`Registry` is that pattern written once: registration (a name only once), the sorted
names, an entry's options read from its signature, the lookup and the check of a call's option names, each with
a one-line message that names the kind of entry ("dataset", "model").
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable
from typing import Any, Generic, TypeVar

__all__ = ["Registry"]

EntryT = TypeVar("EntryT", bound=Callable[..., Any])


class Registry(Generic[EntryT]):
    """Functions registered under names, whose options are the parameters of their signatures.

    Args:
        kind: what an entry builds, for messages ("dataset", "model"); its plural is ``kind + "s"``.
        reserved: the parameters every entry takes, which are not options of its own.
        alternative: appended to the list of known names when a name is unknown (e.g. ", or a user's
            package.module:factory"); empty by default.
    """

    def __init__(self, kind: str, reserved: Iterable[str], alternative: str = "") -> None:
        self.kind = kind
        self.reserved = tuple(reserved)
        self.alternative = alternative
        self._entries: dict[str, EntryT] = {}

    def register(self, name: str) -> Callable[[EntryT], EntryT]:
        """Decorator that registers an entry under `name`.

        Args:
            name: the registry name (lower case, e.g. "cifar10").

        Returns:
            The decorator; it returns the entry unchanged.

        Raises:
            ValueError: if `name` is already registered.
        """

        def decorate(entry: EntryT) -> EntryT:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._entries[name] = entry
            return entry

        return decorate

    def names(self) -> list[str]:
        """Return the registered names, sorted."""
        return sorted(self._entries)

    def get(self, name: str) -> EntryT:
        """Return the entry registered under `name`.

        Raises:
            ValueError: `name` is not registered (the message lists the known names).
        """
        if name not in self._entries:
            raise ValueError(f"unknown {self.kind} {name!r}; known {self.kind}s: {', '.join(self.names())}"
                             f"{self.alternative}")
        return self._entries[name]

    def options(self, name: str) -> dict[str, Any]:
        """Return the options the entry `name` accepts, with their defaults.

        Args:
            name: a registered name.

        Returns:
            A dict from option name to default value (``inspect.Parameter.empty`` for required ones): the entry's
            parameters other than the reserved ones.

        Raises:
            ValueError: `name` is not registered.
        """
        return {
            param.name: param.default
            for param in inspect.signature(self.get(name)).parameters.values()
            if param.name not in self.reserved
        }

    def check_options(self, name: str, options: Iterable[str]) -> None:
        """Refuse option names that the entry `name` does not accept.

        Raises:
            ValueError: `name` is not registered, or an option is unknown (the message lists the allowed ones).
        """
        allowed = self.options(name)
        unknown = sorted(set(options) - set(allowed))
        if unknown:
            raise ValueError(
                f"unknown option(s) {unknown} for {self.kind} {name!r}; allowed: {sorted(allowed) or 'none'}"
            )
