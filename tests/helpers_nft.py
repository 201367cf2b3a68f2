"""A throw-away network namespace with the real `nft` in it, for proving rulesets valid.

Each namespace has its own nftables ruleset, so loading a generated table there cannot
touch the host's. Names are `mr-<random>-nft`; the namespace is deleted in `finally`,
whatever the test did.
"""

from __future__ import annotations

import json
import secrets
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from markroute.kernel.nft import normalise
from markroute.plan.nftjson import json_default


class NftNamespace:
    """`nft` run inside one namespace; every call checks its exit status."""

    def __init__(self, name: str) -> None:
        self.name = name

    def nft(self, *args: str, stdin: str | None = None) -> str:
        result = subprocess.run(["ip", "netns", "exec", self.name, "nft", *args], input=stdin,
                                capture_output=True, text=True, timeout=120, check=False)
        if result.returncode != 0:
            raise AssertionError(f"nft {' '.join(args)} failed in {self.name}:\n{result.stderr}")
        return result.stdout

    def listing(self) -> list[dict[str, Any]]:
        """`nft -j list ruleset` without the version banner, handles and counter values."""
        document = json.loads(self.nft("-j", "list", "ruleset") or '{"nftables": []}')
        return normalise(item for item in document["nftables"] if "metainfo" not in item)

    def load_json(self, document: dict[str, Any]) -> list[dict[str, Any]]:
        """An empty ruleset, DOCUMENT loaded with `nft -j -f -`, and what the kernel then lists."""
        self.nft("flush", "ruleset")
        self.nft("-j", "-f", "-", stdin=json.dumps(document, default=json_default))
        return self.listing()

    def load_text(self, text: str) -> list[dict[str, Any]]:
        """An empty ruleset, TEXT loaded with `nft -f -`, and what the kernel then lists."""
        self.nft("flush", "ruleset")
        self.nft("-f", "-", stdin=text)
        return self.listing()


@contextmanager
def nft_namespace() -> Iterator[NftNamespace]:
    name = f"mr-{secrets.token_hex(4)}-nft"
    subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True, timeout=30)
    try:
        yield NftNamespace(name)
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False, capture_output=True, timeout=30)
