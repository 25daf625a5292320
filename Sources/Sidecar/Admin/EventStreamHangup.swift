import HTTPTypes
import NIOCore
import NIOHTTPTypes
import Upstreams

/// Closes an admin connection whose client shut its sending side while an event stream is being
/// written to it.
///
/// Hummingbird allows half-closed connections, so a client's FIN is an `inputClosed` event, not a close:
/// an answer already being written goes on. For a run's event stream, which never ends on its own, that
/// meant the stream — and its place under `runs.max_streams_per_run` — lasted until a heartbeat write
/// failed (two heartbeats, 30 s by default): a client that went away and reconnected at once was refused
/// 429. Only a client that reset the connection was noticed. Other answers keep HTTP's half-close: a
/// client may shut its side after its request and still read the answer.
final class EventStreamHangup: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPRequestPart
    typealias InboundOut = HTTPRequestPart
    typealias OutboundIn = HTTPResponsePart
    typealias OutboundOut = HTTPResponsePart

    private var streaming = false

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        switch unwrapOutboundIn(data) {
        case .head(let head):
            streaming = head.headerFields[.contentType].map { HeaderName.isMediaType($0, "text/event-stream") } ?? false
        case .end:
            streaming = false
        case .body:
            break
        }
        context.write(data, promise: promise)
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if streaming, let event = event as? ChannelEvent, event == .inputClosed {
            context.close(promise: nil)
            return
        }
        context.fireUserInboundEventTriggered(event)
    }
}
