import NIOCore

/// Answers every call with its adapter's deterministic mock, without touching the network.
///
/// It sits at the same seam as the live transport, so chaos, retries, breakers and the cache treat mock
/// answers exactly like real ones.
public struct MockTransport: UpstreamTransport {
    private let adapters: ToolAdapters

    public init(adapters: ToolAdapters) { self.adapters = adapters }

    public func send(_ request: UpstreamRequest) async throws(UpstreamError) -> UpstreamResponse {
        adapters.adapter(for: request.tool).mockResponse(for: request.call)
    }

    public func start(_ request: UpstreamRequest, on loop: any EventLoop) -> StartedCall? {
        .answered(adapters.adapter(for: request.tool).mockResponse(for: request.call), on: loop)
    }
}

/// Sends each tool's calls to the mock or the live transport, as configured per tool.
public struct ModeSwitchTransport: UpstreamTransport {
    private let live: any UpstreamTransport
    private let mock: any UpstreamTransport
    private let mockTools: Set<Tool>

    public init(live: any UpstreamTransport, mock: any UpstreamTransport, mockTools: Set<Tool>) {
        self.live = live
        self.mock = mock
        self.mockTools = mockTools
    }

    public func send(_ request: UpstreamRequest) async throws(UpstreamError) -> UpstreamResponse {
        mockTools.contains(request.tool) ? try await mock.send(request) : try await live.send(request)
    }

    public func start(_ request: UpstreamRequest, on loop: any EventLoop) -> StartedCall? {
        mockTools.contains(request.tool) ? mock.start(request, on: loop) : live.start(request, on: loop)
    }
}

/// Sends each tool's calls to its own transport (http_fetch to the SSRF-safe one, the rest to the
/// pooled client).
public struct ToolRouterTransport: UpstreamTransport {
    private let routes: PerTool<any UpstreamTransport>
    private let fallback: any UpstreamTransport

    public init(routes: [Tool: any UpstreamTransport], fallback: any UpstreamTransport) {
        self.routes = PerTool(routes)
        self.fallback = fallback
    }

    public func send(_ request: UpstreamRequest) async throws(UpstreamError) -> UpstreamResponse {
        try await (routes[request.tool] ?? fallback).send(request)
    }

    public func start(_ request: UpstreamRequest, on loop: any EventLoop) -> StartedCall? {
        (routes[request.tool] ?? fallback).start(request, on: loop)
    }
}
