"""host:port addresses, and NAME=HOST:PORT entries naming one (settings, CLI flags, run configs)."""

from __future__ import annotations

from collections.abc import Collection


def is_host_port(address: str) -> bool:
    """HOST:PORT with a host and a port in 1..65535 (an IPv6 host keeps its colons: the port is after the last)."""
    host, sep, port = address.rpartition(":")
    return bool(sep and host and port.isdigit() and 0 < int(port) < 65536)


def parse_named_address(item: str, field: str, names: Collection[str], form: str = "NAME=HOST:PORT") -> tuple[str, str]:
    """One NAME=HOST:PORT entry as (name, address); ValueError naming the field, the entry and what it must be."""
    name, sep, address = (x.strip() for x in item.partition("="))
    if not (sep and name in names and is_host_port(address)):
        word = form.partition("=")[0]
        raise ValueError(f"{field} entry {item[:80]!r} must be {form} with {word} one of {', '.join(names)} "
                         f"and PORT in 1..65535")
    return name, address


def parse_named_addresses(items: list[str], field: str, names: Collection[str],
                          form: str = "NAME=HOST:PORT") -> dict[str, str]:
    """Several entries as {name: address} (a name given twice keeps the last)."""
    return dict(parse_named_address(item, field, names, form) for item in items)
