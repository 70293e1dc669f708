"""The providers a portal file may name, by ``provider:`` value.

The three built-in ones register when this module is first imported; another (a OneRoster 1.2
feed, a test double) registers with :func:`register`, after which portal files may name it and
the DAG factory builds its DAGs like any other. Listeners (the portal model) are told of each
registration, so the ``source:`` union always holds every registered provider.
"""

from __future__ import annotations

from collections.abc import Callable

from include.sis_sync.providers.base import Provider

_PROVIDERS: dict[str, Provider] = {}
_LISTENERS: list[Callable[[], None]] = []


class UnknownProvider(KeyError):
    """A ``provider:`` value no registered provider answers to."""

    def __str__(self) -> str:
        return str(self.args[0])


def register(provider: Provider) -> Provider:
    """Add (or replace) a provider under its name and tell the listeners."""
    _PROVIDERS[provider.name] = provider
    for listener in _LISTENERS:
        listener()
    return provider


def unregister(name: str) -> None:
    """Remove a provider (tests that register their own call this when done)."""
    if _PROVIDERS.pop(name, None) is not None:
        for listener in _LISTENERS:
            listener()


def get(name: str) -> Provider:
    """The provider named ``name``; :class:`UnknownProvider` names the known ones."""
    try:
        return _PROVIDERS[name]
    except KeyError:
        known = ", ".join(sorted(_PROVIDERS))
        raise UnknownProvider(f"unknown provider {name!r} (known: {known})") from None


def names() -> list[str]:
    return sorted(_PROVIDERS)


def providers() -> list[Provider]:
    return [_PROVIDERS[n] for n in names()]


def on_change(listener: Callable[[], None]) -> None:
    """Call ``listener`` after every registration (the portal model rebuilds its union)."""
    _LISTENERS.append(listener)


def permanent_errors() -> tuple[type[Exception], ...]:
    """Every registered provider's errors that a retry cannot fix."""
    return tuple(dict.fromkeys(e for p in providers() for e in p.permanent_errors))


def _register_builtins() -> None:
    from include.sis_sync.providers.clever_provider import CleverProvider
    from include.sis_sync.providers.oneroster_csv_provider import OneRosterCsvProvider
    from include.sis_sync.providers.oneroster_rest_provider import OneRosterRestProvider

    for provider in (OneRosterCsvProvider(), CleverProvider(), OneRosterRestProvider()):
        _PROVIDERS[provider.name] = provider


_register_builtins()
