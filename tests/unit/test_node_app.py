"""The node app factory: origin and edge answer the ops routes alike (in process, no sockets)."""

from __future__ import annotations

import httpx

from gateway.app import create_app
from gateway.settings import Settings
from relay.http.guards import rate_limited
from relay.server.edge import build_edge_node, create_edge_app
from relay.server.settings import ClusterSettings, NodeSettings

SECRET = "unit-secret-" + "x" * 40
OPERATOR = "unit-operator-key-0123456789"
SCRAPE = "unit-scrape-token-0123456789"


async def test_ops_routes_are_the_same_on_edge_and_origin() -> None:
    """One factory: healthz and readyz answer alike on both roles, /metrics takes the operator
    key or the scrape token on both and has the node-wide series once (the origin adds its own
    beside them); an edge that drains is not ready."""
    edge_settings = NodeSettings(
        cluster=ClusterSettings(role="edge", upstream="http://127.0.0.1:9", node_id="e")
    )
    node = build_edge_node(edge_settings)
    settings = Settings(
        auth={"token_secret": SECRET},  # type: ignore[arg-type]
        api={"operator_key": OPERATOR},  # type: ignore[arg-type]
        metrics={"token": SCRAPE},  # type: ignore[arg-type]
    )
    apps = {
        "edge": create_edge_app(node, ops_keys=(OPERATOR, SCRAPE)),
        "origin": create_app(settings),
    }
    for role, app in apps.items():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://node") as http:
            assert (await http.get("/healthz")).json() == {"status": "ok"}, role
            ready = await http.get("/readyz")
            assert ready.status_code == 200 and ready.json()["status"] == "ready", role
            assert (await http.get("/metrics")).status_code == 401, role
            op = await http.get("/metrics", headers={"X-API-Key": OPERATOR})
            assert op.status_code == 200, role
            text = (await http.get("/metrics", headers={"Authorization": f"Bearer {SCRAPE}"})).text
            for name in ("stagecast_egress_bytes_total", "stagecast_event_loop_lag_seconds"):
                assert text.count(f"\n{name} ") == 1, (role, name)
            assert ("stagecast_rooms " in text) == (role == "origin")
            assert ("stagecast_pulls " in text) == (role == "edge")
    await node.cluster.set_draining(True)
    transport = httpx.ASGITransport(app=apps["edge"])
    async with httpx.AsyncClient(transport=transport, base_url="http://node") as http:
        ready = await http.get("/readyz")
        assert ready.status_code == 503 and ready.json()["status"] == "draining"


def _sync_calls(app: object) -> list[str]:
    """Route handlers and dependencies FastAPI would run in its thread pool (plain ``def``)."""
    import inspect

    from fastapi.routing import APIRoute, APIWebSocketRoute

    found: list[str] = []

    def walk(dependant: object, where: str) -> None:
        call = getattr(dependant, "call", None)
        if call is not None:
            target = call if inspect.isfunction(call) or inspect.ismethod(call) else call.__call__
            if not inspect.iscoroutinefunction(target):
                found.append(f"{where}: {getattr(call, '__qualname__', call)!r}")
        for sub in getattr(dependant, "dependencies", ()):
            walk(sub, where)

    def routes(holder: object) -> None:
        for route in getattr(holder, "routes", ()):
            if isinstance(route, APIRoute | APIWebSocketRoute):
                walk(route.dependant, route.path)
            inner = getattr(route, "original_router", None)  # an included router
            if inner is not None:
                routes(inner)

    routes(app)
    return found


def test_no_handler_or_dependency_runs_in_a_thread() -> None:
    """A plain ``def`` handler or dependency runs in AnyIO's thread pool: a thread hop per
    request and up to 40 idle worker threads left behind (a sync WHEP dependency left seven
    after the soak's churn)."""
    edge_settings = NodeSettings(
        cluster=ClusterSettings(role="edge", upstream="http://127.0.0.1:9", node_id="e")
    )
    edge = create_edge_app(build_edge_node(edge_settings), ops_keys=(OPERATOR,))
    origin = create_app(Settings(auth={"token_secret": SECRET}))  # type: ignore[arg-type]
    assert _sync_calls(edge) == [] and _sync_calls(origin) == []


async def test_edge_and_origin_guard_bodies_and_session_posts_alike() -> None:
    """The body cap (413) and the per-address WHIP/WHEP POST rate (429) stand in front of both
    roles: an edge is what the public reaches first, and before it had neither."""
    limits = {"max_body_bytes": 2048, "session_posts_per_second": 0.01, "session_post_burst": 2}
    edge_settings = NodeSettings(
        cluster=ClusterSettings(role="edge", upstream="http://127.0.0.1:9", node_id="e"),
        limits=limits,  # type: ignore[arg-type]
    )
    apps = {
        "edge": create_edge_app(build_edge_node(edge_settings)),
        "origin": create_app(Settings(auth={"token_secret": SECRET}, limits=limits)),  # type: ignore[arg-type]
    }
    for role, app in apps.items():
        transport = httpx.ASGITransport(app=app, client=("198.51.100.7", 40000))
        async with httpx.AsyncClient(transport=transport, base_url="http://node") as http:
            sdp = {"content-type": "application/sdp"}
            big = await http.post("/whep/room", content=b"v=0\r\n" + b"a" * 4096, headers=sdp)
            assert big.status_code == 413, role
            assert big.headers["content-type"] == "application/problem+json", role
            text = {"content-type": "text/plain"}  # refused by the route (415) before any work
            statuses = [
                (await http.post("/whep/room", content=b"v=0\r\n", headers=text)).status_code
                for _ in range(3)
            ]
            assert statuses[-1] == 429 and 429 not in statuses[:1], (role, statuses)
            assert (await http.get("/healthz")).status_code == 200, role


def test_the_posts_that_open_media_sessions_are_rate_limited() -> None:
    """WHIP/WHEP offers and cross-room links (each may open a pull from another node); reads,
    deletes and the rest of the API are not."""
    for path in ("/whip/r", "/whep/r", "/whep/r/", "/v1/rooms/r/links", "/v1/rooms/r/links/"):
        assert rate_limited("POST", path), path
    assert not rate_limited("GET", "/v1/rooms/r/links")
    assert not rate_limited("DELETE", "/v1/rooms/r/links/a1")
    assert not rate_limited("POST", "/v1/rooms/r/links/a1/mute")
    assert not rate_limited("POST", "/v1/rooms")
