#!/usr/bin/env python3
"""The scenarios' upstream: one aiohttp server answering like the four real APIs (SerpAPI search, an
OpenAI chat completion with usage, a Gmail send, a web page), with a fixed service time so the
sidecar's added latency can be told apart from the upstream's. Prints its port on stdout.

    python3 bench/load/upstream.py [--delay-ms 2]
"""
import argparse
import asyncio
import json

from aiohttp import web

SEARCH = {"search_metadata": {"status": "Success"}, "organic_results": [{"position": i, "title": f"Result {i}", "link": f"https://example.com/{i}"} for i in range(1, 6)]}
CHAT = {"id": "chatcmpl-bench", "object": "chat.completion", "model": "gpt-4o-mini",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "Fine."}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 12, "completion_tokens": 2, "total_tokens": 14}}
PAGE = "<html><body>" + "lorem ipsum " * 200 + "</body></html>"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--delay-ms", type=float, default=2.0)
    args = ap.parse_args()
    delay = args.delay_ms / 1000
    sent = {"n": 0}

    async def pause():
        if delay > 0:
            await asyncio.sleep(delay)

    async def search(request):
        await pause()
        return web.json_response(SEARCH)

    async def chat(request):
        await request.read()
        await pause()
        return web.json_response(CHAT)

    async def gmail(request):
        await request.read()
        await pause()
        sent["n"] += 1
        return web.json_response({"id": f"msg-{sent['n']}", "threadId": "t", "labelIds": ["SENT"]})

    async def page(request):
        await pause()
        return web.Response(text=PAGE, content_type="text/html")

    app = web.Application()
    app.router.add_get("/search", search)
    app.router.add_get("/search.json", search)
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_post("/gmail/v1/users/me/messages/send", gmail)
    app.router.add_get("/page", page)

    async def run():
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]
        print(json.dumps({"port": port}), flush=True)
        await asyncio.Event().wait()

    asyncio.run(run())


if __name__ == "__main__":
    main()
