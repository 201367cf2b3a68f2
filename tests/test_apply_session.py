"""A first apply loads and lists its new table through libnftables in the process (`kernel.libnft`).

What it records must be byte for byte what the same apply records with the nft command
(no libnftables), and what `nft -t -j list ruleset` then lists: the next apply, `status`
and the daemon compare live listings with it. Proved for every example config and the
configs of test_nft_load that use every match key, sets of 5,000 prefixes, merged runs
and a shifted mark mask. The session listing of a table that is not there is None, as
the command's is; a session is refused in another namespace (test_daemon_record).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from kernelhelp import KERNEL
from test_nft_load import CASES, config_path

from markroute.compile import compile_plan
from markroute.config import load_model
from markroute.kernel import libnft, nft, state
from markroute.kernel.apply import apply
from markroute.kernel.down import down
from markroute.kernel.netns import inside
from markroute.lab import Lab

pytestmark = KERNEL


def record_listing(ns: str) -> str:
    """The table as `state.json` holds it (listing and packed elements), as written."""
    data = json.loads(state.read_record(ns, state.STATE_RECORD) or "{}")
    return json.dumps([data["nft_listing"], data["nft_elements"]], sort_keys=True)


@pytest.mark.parametrize("case", CASES)
def test_the_record_through_libnftables_is_the_record_through_nft(
    case: str, tmp_path: Path, lab: Lab, monkeypatch: pytest.MonkeyPatch
) -> None:
    model, diagnostics = load_model(str(config_path(case, tmp_path)))
    assert model is not None, [d.render() for d in diagnostics]
    plan = compile_plan(model)
    ns = lab.add_ns("a10")
    records: list[str] = []
    try:
        with inside(ns):
            for without_library in (False, True):
                if without_library:
                    monkeypatch.setattr(libnft, "open_session", lambda: None)
                assert apply(plan, ns).changed
                records.append(record_listing(ns))
                listed = nft.normalise(nft.table_structure(plan.table_name) or [])  # the nft command
                recorded = state.load(ns)
                assert recorded is not None and nft.without_elements(recorded.nft_listing) == listed
                down(ns)
    finally:
        shutil.rmtree(state.directory(ns), ignore_errors=True)
    assert records[0] == records[1]


def test_a_session_lists_a_table_as_nft_does_and_none_when_it_is_absent(lab: Lab) -> None:
    ns = lab.add_ns("a10")
    table = [{"table": {"family": "inet", "name": "a10"}},
             {"chain": {"family": "inet", "table": "a10", "name": "c"}},
             {"rule": {"family": "inet", "table": "a10", "chain": "c", "expr": [{"counter": None}], "comment": "x"}}]
    with inside(ns):
        session = libnft.open_session()
        assert session is not None, "libnftables is installed with nftables"
        try:
            assert nft.table_structure("a10", session) is None
            nft.run_batch(({"add": obj} for obj in table), session)
            listed = nft.table_structure("a10", session)
            assert listed == nft.table_structure("a10") and len(listed or []) == 3
        finally:
            session.close()
