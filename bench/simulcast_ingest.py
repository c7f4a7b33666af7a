"""Ingest cost of simulcast: a node's CPU with one Chromium anchor publishing 3 layers vs 1.

``stagecast serve`` as a subprocess (its whole-process CPU from /proc over ``--seconds``); a
headless Chromium (fake camera, 1280x720) goes live from the publish page with the simulcast
switch on (q/h/f: 1/4, 1/2, full size) and, in turn, off; no viewers. Indicative: Chromium's
bitrates follow its own estimate, so the table prints what arrived (packets/s, kbit/s).

    python -m bench.simulcast_ingest --seconds 20 --repeat 2
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import psutil
from playwright.async_api import async_playwright

from bench.fanout import SECRET, Child, Children, _die_with_parent, wait_healthy
from bench.joins import process_cpu
from gateway.launcher import free_port, free_udp_port
from relay.auth.tokens import TokenAuthority

ROOM = "simulcast-bench"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--use-fake-device-for-media-stream",
    "--use-fake-ui-for-media-stream",
]


async def node(children: Children, port: int, operator_key: str) -> Child:
    env = {
        **os.environ,
        "STAGECAST_AUTH__TOKEN_SECRET": SECRET,
        "STAGECAST_API__OPERATOR_KEY": operator_key,
        "STAGECAST_LOG_LEVEL": "warning",
    }
    argv = [sys.executable, "-m", "gateway.cli", "serve", "--port", str(port)]
    argv += ["--udp-port", str(free_udp_port())]  # not the default 8443: nodes side by side
    log_path = children.log_dir / f"node-{port}.log"
    with log_path.open("w") as out:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            preexec_fn=_die_with_parent,
        )
    child = Child(log_path.stem, proc, psutil.Process(proc.pid), log_path)
    children.items.append(child)
    return child


async def until(page: object, expression: str, timeout: float) -> None:
    """Polls a JS expression (the page's CSP forbids wait_for_function's eval)."""
    deadline = time.monotonic() + timeout
    while not await page.evaluate(expression):  # type: ignore[attr-defined]
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {expression}")
        await asyncio.sleep(0.1)


async def measure(browser: object, simulcast: bool, args: argparse.Namespace) -> dict[str, Any]:
    children = Children(Path(tempfile.mkdtemp(prefix="stagecast-simulcast-")))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    key = "bench-operator-" + "k" * 32
    child = await node(children, port, key)
    token = TokenAuthority(SECRET).mint(ROOM, "anchor", "bench", 3600)
    try:
        await wait_healthy(url, child)
        context = await browser.new_context()  # type: ignore[attr-defined]
        page = await context.new_page()
        flag = "" if simulcast else "&simulcast=0"
        await page.goto(f"{url}/publish?room={ROOM}&quality=720{flag}#token={token}")
        await until(page, "window.stagecast.stream && !document.querySelector('#go').disabled", 10)
        await page.click("#go")
        await until(page, "window.stagecast.state === 'live'", 15)
        await asyncio.sleep(args.settle)
        api = httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {key}"})
        anchors0 = (await api.get(f"/v1/rooms/{ROOM}/anchors")).json()
        cpu0, t0 = process_cpu(child.proc.pid), time.monotonic()
        await asyncio.sleep(args.seconds)
        cores = (process_cpu(child.proc.pid) - cpu0) / (time.monotonic() - t0)
        elapsed = time.monotonic() - t0
        anchors1 = (await api.get(f"/v1/rooms/{ROOM}/anchors")).json()
        view = (await api.get(f"/v1/rooms/{ROOM}/stream")).json()
        await api.aclose()
        await context.close()
        packets = (anchors1[0]["packets_received"] - anchors0[0]["packets_received"]) / elapsed
        layers = view["layers"] or [
            {"height": view["height"], "bitrate_bps": view["video"]["bitrate_bps"]}
        ]
        kbps = sum(layer["bitrate_bps"] for layer in layers) / 1000
        shape = "/".join(
            f"{layer['height']}p@{layer['bitrate_bps'] / 1000:.0f}k" for layer in layers
        )
        return {"cores": cores, "packets": packets, "kbps": kbps, "shape": shape}
    finally:
        await children.stop_all()


async def run(args: argparse.Namespace) -> None:
    print("| layers | node cores | packets/s in | video kbit/s in | layers (height@kbit/s) |")
    print("|---|---|---|---|---|")
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        try:
            for _ in range(args.repeat):
                for simulcast in (False, True):
                    r = await measure(browser, simulcast, args)
                    print(
                        f"| {3 if simulcast else 1} | {r['cores']:.4f} | {r['packets']:.0f} "
                        f"| {r['kbps']:.0f} | {r['shape']} |",
                        flush=True,
                    )
        finally:
            with contextlib.suppress(Exception):
                await browser.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--settle", type=float, default=8.0)
    parser.add_argument("--repeat", type=int, default=1)
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
