"""The FlexPOS emulator's batch control route (a benchmark changes 1% of its customers at once)."""

from __future__ import annotations

import httpx

from sandbox.server import SandboxServer


def test_batch_control_route_changes_many_customers_and_refuses_a_non_list():
    with SandboxServer(seed=3, customers=20, rate_limits=False) as server:
        with httpx.Client(base_url=server.url, timeout=10) as http:
            changed = [{"CustomerId": i, "City": "Nyby"} for i in (1000, 1005, 1010)]
            answer = http.post("/_sandbox/flexpos/customers/batch", json={"customers": changed})
            assert answer.status_code == 200 and answer.json() == {"upserted": 3}
            flexpos = server.emulator("flexpos")
            assert [flexpos.customer(i)["City"] for i in (1000, 1005, 1010)] == ["Nyby"] * 3
            assert flexpos.customer(1001)["City"] != "Nyby"
            bad = http.post("/_sandbox/flexpos/customers/batch", json={"customers": {"x": 1}})
            assert bad.status_code == 400
