"""A stagecast room inside a bed: the gateway (``stagecast serve``) in the gateway namespace, the
anchor and the viewers (``bench.netbed.peer``) in their legs' namespaces, the operator API read
from a thread that enters the gateway's namespace."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil

from bench.netbed import netns
from bench.netbed.bed import GATEWAY_ADDRESS, NetBed, _readline
from relay.auth.tokens import TokenAuthority

ROOT = Path(__file__).resolve().parents[2]
SECRET = "stagecast-netbed-secret-" + "n" * 32
OPERATOR_KEY = "netbed-operator-" + "k" * 24
PORT = 8080


@dataclass(eq=False)
class BedRoom:
    """``start`` the gateway and the anchor; ``watch`` runs viewers for a while and returns what
    each saw; ``close`` (or the bed's own teardown) stops everything."""

    bed: NetBed
    room: str = "bed"
    anchor_leg: str = "anchor"
    kbps: int = 1500
    size: tuple[int, int] = (1280, 720)
    log_dir: Path | None = None
    gateway_env: dict[str, str] = field(default_factory=dict)
    gateway_tree: Path | None = None  # run the gateway from this checkout (its .venv), not ours
    gateway: subprocess.Popen[str] | None = None
    anchor: subprocess.Popen[str] | None = None
    _logs: list[Any] = field(default_factory=list)

    @property
    def base_url(self) -> str:
        return f"http://{GATEWAY_ADDRESS}:{PORT}"

    def _env(self) -> dict[str, str]:
        return {"PYTHONPATH": str(ROOT)}

    def _log(self, name: str) -> Any:
        if self.log_dir is None:
            return subprocess.DEVNULL
        self.log_dir.mkdir(parents=True, exist_ok=True)
        f = (self.log_dir / f"{name}.log").open("w")
        self._logs.append(f)
        return f

    def start(self, timeout: float = 30.0) -> None:
        self.start_gateway(timeout)
        self.start_anchor(timeout)

    def start_gateway(self, timeout: float = 30.0) -> None:
        """The gateway alone, healthy (a bench that brings its own anchor calls this)."""
        env = {
            **self._env(),
            "STAGECAST_HOST": GATEWAY_ADDRESS,
            "STAGECAST_PORT": str(PORT),
            "STAGECAST_AUTH__TOKEN_SECRET": SECRET,
            "STAGECAST_API__OPERATOR_KEY": OPERATOR_KEY,
            "STAGECAST_LOG_LEVEL": "info",
            # the machine is shared (other suites, the viewers' decoders): refusing viewers as
            # overloaded would measure the machine, not the network
            "STAGECAST_LIMITS__MAX_LOOP_BUSY": "1.0",
            "STAGECAST_LIMITS__MAX_LOOP_LAG": "5.0",
            **self.gateway_env,
        }
        log = self._log("gateway")
        python, tree = sys.executable, self.gateway_tree
        if tree is not None:
            python, env["PYTHONPATH"] = str(tree / ".venv" / "bin" / "python"), str(tree)
        self.gateway = self.bed.popen(
            self.bed.gateway_ns,
            [python, "-m", "gateway.cli", "serve"],
            env=env,
            stdout=log,
            stderr=log,
            cwd=tree,
        )
        deadline = time.monotonic() + timeout
        while not self._healthy():
            if self.gateway.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the gateway did not become healthy in the bed")
            time.sleep(0.2)

    def anchor_token(self) -> str:
        return TokenAuthority(SECRET).mint(self.room, "anchor", "netbed-anchor", 3600)

    def start_anchor(self, timeout: float = 30.0) -> None:
        """The stamped synthetic anchor, until the room is live."""
        token = self.anchor_token()
        self.anchor = self.bed.popen(
            self.bed.legs[self.anchor_leg].ns,
            [
                *self._peer("anchor"),
                *("--token", token, "--kbps", str(self.kbps)),
                *("--width", str(self.size[0]), "--height", str(self.size[1])),
            ],
            env=self._env(),
            stderr=self._log("anchor"),
        )
        assert self.anchor.stdout is not None
        line = _readline(self.anchor.stdout, timeout)
        if "location" not in line:
            raise RuntimeError(f"the anchor did not publish: {line!r}")
        self.wait_live(timeout)

    def wait_live(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while not self._live():
            if time.monotonic() > deadline:
                raise RuntimeError("the room did not go live")
            time.sleep(0.2)

    def _live(self) -> bool:
        try:
            return bool(self.api(f"/v1/rooms/{self.room}/stream").get("live"))
        except httpx.HTTPStatusError as exc:
            if exc.response.status_code == 404:  # no anchor has published yet
                return False
            raise

    def _peer(self, role: str) -> list[str]:
        return [sys.executable, "-m", "bench.netbed.peer", role, self.base_url, self.room]

    def _healthy(self) -> bool:
        try:
            return int(self._get("/healthz", json_body=False)) == 200
        except (httpx.HTTPError, OSError):
            return False

    def _get(self, path: str, *, json_body: bool = True) -> Any:
        def get() -> Any:
            headers = {"Authorization": f"Bearer {OPERATOR_KEY}"}
            with httpx.Client(base_url=self.base_url, timeout=5.0, headers=headers) as client:
                resp = client.get(path)
                if not json_body:
                    return resp.status_code
                resp.raise_for_status()
                return resp.json() if "json" in resp.headers.get("content-type", "") else resp.text

        return netns.run_in(self.bed.gateway_ns, get, timeout=15.0)

    def api(self, path: str) -> Any:
        """GET an operator API path (or /metrics) from inside the gateway's namespace."""
        return self._get(path)

    def watch(self, legs: list[str], seconds: float, timeout: float = 60.0) -> list[dict[str, Any]]:
        """Viewers on ``legs`` watch for ``seconds``; each one's Playback plus the gateway's
        counters for its session (``gateway``)."""
        procs = [
            self.bed.popen(
                self.bed.legs[leg].ns,
                [*self._peer("viewer"), "--seconds", str(seconds)],
                env=self._env(),
                stderr=self._log(f"viewer-{leg}"),
            )
            for leg in legs
        ]
        return self.collect(legs, procs, seconds + timeout)

    def collect(
        self, legs: list[str], procs: list[subprocess.Popen[str]], timeout: float
    ) -> list[dict[str, Any]]:
        """The result lines of viewer processes, each with the gateway's last counters for its
        session (``gateway``), polled every second while they run: a session's counters end
        with it."""
        seen: dict[str, dict[str, Any]] = {}
        deadline = time.monotonic() + timeout
        while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError, OSError, TimeoutError):
                seen.update(self.viewer_counters())
            time.sleep(1.0)
        out: list[dict[str, Any]] = []
        for leg, proc in zip(legs, procs, strict=True):
            assert proc.stdout is not None
            try:
                line = _readline(proc.stdout, 5.0)
            except TimeoutError:
                line = ""
            result = json.loads(line) if line.strip() else {"error": "no result"}
            result["leg"] = leg
            result["gateway"] = seen.get(str(result.get("session")), {})
            out.append(result)
        return out

    def viewer_counters(self) -> dict[str, dict[str, Any]]:
        """The gateway's view of each live viewer session, by session id."""
        listing = self.api(f"/v1/rooms/{self.room}/viewers")
        return {v["id"]: v for v in listing["viewers"]}

    def gateway_cpu(self) -> float:
        assert self.gateway is not None
        t = psutil.Process(self.gateway.pid).cpu_times()
        return float(t.user + t.system)

    def stop_anchor(self, timeout: float = 15.0) -> dict[str, Any]:
        anchor, self.anchor = self.anchor, None
        if anchor is None or anchor.stdin is None or anchor.stdout is None:
            return {}
        anchor.stdin.close()
        line = _readline(anchor.stdout, timeout)
        anchor.wait(timeout)
        return dict(json.loads(line)) if line.strip() else {}

    def close(self) -> None:
        for f in self._logs:
            f.close()
        self._logs.clear()
