#!/usr/bin/env python3
"""Streamed chat completions (SSE) for bench/stream.sh: a fake OpenAI backend and a client.

  sse_stream.py backend PORT
      POST /v1/chat/completions answers `stream: true` as OpenAI does: `text/event-stream`, chunked, one
      `chat.completion.chunk` event per chunk, the usage event when `stream_options.include_usage` asks
      for it, then `data: [DONE]`. The user message says how: "events=N gap_ms=G" (the first event goes
      at once, the next ones G ms apart: a stream still being generated).

  sse_stream.py ttfb HOST:PORT PATH [--token T] [--streams N]
      N streams one after another on one kept-alive connection; for each, the time from the request's
      last byte to the first event's bytes. Prints JSON {p50_us, p99_us, n}.

  sse_stream.py rate HOST:PORT PATH [--token T] [--conns C] [--events E]
      C streams of E events at once, each on its own connection, as fast as the backend writes them.
      Prints JSON {events_per_s, seconds}.
"""
import asyncio
import json
import socket
import sys
import time

CHUNK = ('{"id":"chatcmpl-bench","object":"chat.completion.chunk","created":1733400000,"model":"gpt-4o-mini",'
         '"choices":[{"index":0,"delta":{"content":"token "},"finish_reason":null}]}')


def event(data: str) -> bytes:
    payload = f"data: {data}\n\n".encode()
    return b"%x\r\n%s\r\n" % (len(payload), payload)


async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value.strip())
            body = json.loads(await reader.readexactly(length)) if length else {}
            text = " ".join(m.get("content", "") for m in body.get("messages", []) if isinstance(m.get("content"), str))
            opts = dict(part.split("=", 1) for part in text.split() if "=" in part)
            events, gap = int(opts.get("events", "20")), float(opts.get("gap_ms", "0")) / 1000
            usage = (body.get("stream_options") or {}).get("include_usage") is True
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
                         b"Transfer-Encoding: chunked\r\n\r\n")
            one = event(CHUNK)
            for i in range(events):
                writer.write(one)
                if gap:
                    await writer.drain()
                    await asyncio.sleep(gap)
                elif i % 64 == 63:
                    await writer.drain()
            if usage:
                writer.write(event('{"id":"chatcmpl-bench","object":"chat.completion.chunk","created":1733400000,'
                                   '"model":"gpt-4o-mini","choices":[],"usage":{"prompt_tokens":9,"completion_tokens":%d,'
                                   '"total_tokens":%d}}' % (events, events + 9)))
            writer.write(event("[DONE]") + b"0\r\n\r\n")
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


def request(host: str, path: str, token: str | None, events: int, gap_ms: float) -> bytes:
    body = json.dumps({"model": "gpt-4o-mini", "stream": True, "max_tokens": 64,
                       "messages": [{"role": "user", "content": f"events={events} gap_ms={gap_ms}"}]}).encode()
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    return (f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n{auth}"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


def read_stream(sock: socket.socket, first: list) -> int:
    """Reads one chunked answer to its end; records when the first event's bytes arrived."""
    seen, tail = 0, b""
    while True:
        data = sock.recv(262144)
        if not data:
            raise ConnectionError("closed mid-stream")
        now = time.perf_counter()
        if not first and b"data:" in tail + data:
            first.append(now)
        seen += len(data)
        tail = (tail + data)[-8:]
        if tail.endswith(b"\r\n0\r\n\r\n"):
            return seen


def ttfb(target: str, path: str, token: str | None, streams: int) -> dict:
    host, port = target.rsplit(":", 1)
    sock = socket.create_connection((host, int(port)))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    req = request(target, path, token, 3, 2)
    samples = []
    for i in range(streams + 5):
        first: list = []
        sock.sendall(req)
        sent = time.perf_counter()
        read_stream(sock, first)
        if i >= 5:  # the first ones warm the path up
            samples.append((first[0] - sent) * 1e6)
    samples.sort()
    return {"p50_us": round(samples[len(samples) // 2], 1), "p99_us": round(samples[int(len(samples) * 0.99)], 1), "n": len(samples)}


def rate(target: str, path: str, token: str | None, conns: int, events: int) -> dict:
    host, port = target.rsplit(":", 1)

    async def one() -> None:
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(request(target, path, token, events, 0))
        await writer.drain()
        tail = b""
        while not (tail.endswith(b"\r\n0\r\n\r\n")):
            data = await reader.read(262144)
            if not data:
                raise ConnectionError("closed mid-stream")
            tail = (tail + data)[-8:]
        writer.close()

    async def all_of() -> float:
        start = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(conns)))
        return time.perf_counter() - start

    seconds = asyncio.run(all_of())
    return {"events_per_s": round(conns * events / seconds), "seconds": round(seconds, 3)}


def main() -> None:
    args = sys.argv[1:]
    opt = lambda name, default: args[args.index(name) + 1] if name in args else default
    if args[0] == "backend":
        async def run() -> None:
            server = await asyncio.start_server(serve, "127.0.0.1", int(args[1]))
            async with server:
                await server.serve_forever()
        asyncio.run(run())
    elif args[0] == "ttfb":
        print(json.dumps(ttfb(args[1], args[2], opt("--token", None), int(opt("--streams", "300")))))
    elif args[0] == "rate":
        print(json.dumps(rate(args[1], args[2], opt("--token", None), int(opt("--conns", "4")), int(opt("--events", "20000")))))


if __name__ == "__main__":
    main()
