import Foundation
import NIOCore
import NIOHTTP1

/// Gmail: `users.messages.send` (a raw RFC 2822 message, base64url, or — for a message past the JSON
/// endpoint's size, with attachments — the message itself as a media upload:
/// `POST /upload/gmail/v1/users/{id}/messages/send?uploadType=media`, `Content-Type: message/rfc822`, what
/// google-api-python-client sends for `send(media_body=…)`) and `users.getProfile`. The access token is
/// injected as a bearer; sending is never retried or cached.
public struct GmailAdapter: ToolAdapter {
    public let tool = Tool.gmailSend

    public init() {}

    public func interpret(_ request: ToolRequest) throws(ToolRequestError) -> ToolCall {
        var parts = request.path.split(separator: "/", omittingEmptySubsequences: false)
        // The media-upload path of the same method: `/upload/gmail/v1/...`.
        let upload = parts.count >= 2 && parts[1] == "upload"
        if upload { parts.remove(at: 1) }
        // ["", "gmail", "v1", "users", userId, ...]
        guard parts.count >= 6, parts[1] == "gmail", parts[2] == "v1", parts[3] == "users", !parts[4].isEmpty else {
            throw .unknownAction("gmail_send supports POST /gmail/v1/users/{id}/messages/send and GET /gmail/v1/users/{id}/profile")
        }
        // The one segment the agent chooses on a path that carries the real token: "me" or an address
        // (its "@" as is or as %40) — never a dot segment or another escape an upstream could read as
        // a path of its own (`..%2F..%2Fdrive`).
        guard Self.isUserID(parts[4]) else { throw .invalidParameter("the user id must be \"me\" or an email address") }
        let userId = String(parts[4])
        // What follows the user id, compared part by part (not joined into a new string).
        let rest = parts[5...]
        let isSend = rest.count == 2 && rest.first == "messages" && rest.last == "send"
        let isProfile = rest.count == 1 && rest.first == "profile"
        switch request.method {
        case .POST where isSend && upload:
            let message = try Self.uploadedMessage(request)
            return ToolCall(tool: tool, action: "send", request: request, parameters: .gmail(try Self.parameters(userId: userId, message)))
        case .POST where isSend:
            let expected = "messages.send needs a JSON body {\"raw\": base64url}"
            guard let body = request.body else { throw .invalidBody(expected) }
            let json: JSONValue
            do { json = try JSONValue.parseStrict(body.readableBytesView) } catch { throw .body(error, expected: expected) }
            guard case .object = json else { throw .invalidBody(expected) }
            guard let raw = json["raw"]?.stringValue else { throw .invalidParameter("raw is required") }
            guard let bytes = Base64.decode(raw) else { throw .invalidParameter("raw is not base64url") }
            guard let message = RFC2822Message.parse(bytes) else { throw .invalidParameter("raw is not an RFC 2822 message") }
            return ToolCall(tool: tool, action: "send", request: request, parameters: .gmail(try Self.parameters(userId: userId, message)))
        case .GET where isProfile && !upload:
            let params = GmailParameters(userId: userId, recipients: [], subjectBytes: 0, bodyBytes: 0, headerInjection: false)
            return ToolCall(tool: tool, action: "profile", request: request, parameters: .gmail(params))
        default:
            throw .unknownAction("gmail_send supports POST .../messages/send and GET .../profile")
        }
    }

    /// What a send's guards read of its message: recipients (checked), subject and body sizes.
    static func parameters(userId: String, _ message: RFC2822Message) throws(ToolRequestError) -> GmailParameters {
        let recipients: [MailAddress]
        switch message.checkedRecipients() {
        case .success(let r): recipients = r
        case .failure(let e): throw e
        }
        return GmailParameters(
            userId: userId, recipients: recipients, subjectBytes: message.values("subject").first?.utf8.count ?? 0,
            bodyBytes: message.bodyBytes, headerInjection: message.headerInjection)
    }

    /// The message of an upload: `uploadType=media` (given once), the body the RFC 2822 message as
    /// `message/rfc822`; or `uploadType=multipart`, the metadata and the message as `multipart/related`
    /// (`RelatedUpload`). A resumable upload is a session of several requests, the message in a later
    /// one than the recipients' check would see: refused, with what to send instead.
    static func uploadedMessage(_ request: ToolRequest) throws(ToolRequestError) -> RFC2822Message {
        let types = request.query.items.filter { $0.name == "uploadType" }.map(\.value)
        if types == ["multipart"] { return try relatedMessage(request) }
        guard types == ["media"] else {
            throw .invalidParameter(
                "a Gmail upload must be uploadType=media (the message as message/rfc822) or multipart (metadata and message as multipart/related), or send {\"raw\": base64url} to /gmail/v1/users/{id}/messages/send")
        }
        let contentTypes = request.headers["content-type"]
        guard contentTypes.count == 1, HeaderName.isMediaType(contentTypes[0], "message/rfc822") else { throw .unsupportedMediaType("a Gmail media upload is the message itself: Content-Type: message/rfc822") }
        guard let body = request.body, body.readableBytes > 0, let message = RFC2822Message.parse(Array(body.readableBytesView)) else {
            throw .invalidBody("the upload is not an RFC 2822 message")
        }
        return message
    }

    /// The message of a multipart upload. Its metadata may say where the message goes (`threadId`,
    /// `labelIds`); a `raw` there would be a second message beside the one the guards read.
    static func relatedMessage(_ request: ToolRequest) throws(ToolRequestError) -> RFC2822Message {
        let expected = "a Gmail multipart upload is multipart/related: the JSON metadata, then the message as message/rfc822"
        let contentTypes = request.headers["content-type"]
        guard contentTypes.count == 1, let body = request.body else { throw .unsupportedMediaType(expected) }
        let parsed: RelatedUpload?
        do { parsed = try RelatedUpload.parse(body, contentType: contentTypes[0], media: "message/rfc822") } catch {
            throw .invalidBody("\(expected) (\(error.reason))")
        }
        guard let upload = parsed else { throw .unsupportedMediaType(expected) }
        guard upload.metadata["raw"] == nil else { throw .invalidParameter("the metadata of a multipart upload cannot hold raw as well: the message is the second part") }
        guard let message = body.withUnsafeReadableBytes({ RFC2822Message.parse(Array(UnsafeRawBufferPointer(rebasing: $0[upload.media]))) }) else {
            throw .invalidBody("the uploaded part is not an RFC 2822 message")
        }
        return message
    }

    /// "me" or an address (`PathSegment`: its "@" as is or as %40).
    static func isUserID(_ segment: Substring) -> Bool {
        PathSegment.isID(segment, extra: userIDExtra, escapes: [UInt8(ascii: "@")], maxBytes: 320)
    }
    private static let userIDExtra = Array("._+-@".utf8)

    public func compatRequest(action: String, params: JSONValue) throws(ToolRequestError) -> ToolRequest {
        switch action {
        case "profile":
            return ToolRequest(method: .GET, path: "/gmail/v1/users/me/profile")
        case "send":
            func list(_ key: String) throws(ToolRequestError) -> [String] {
                switch params[key] {
                case nil, .null?: return []
                case .string(let s)?: return [s]
                case .array(let a)?:
                    var out: [String] = []
                    for v in a {
                        guard let s = v.stringValue else { throw .invalidParameter("params.\(key) must be strings") }
                        out.append(s)
                    }
                    return out
                default: throw .invalidParameter("params.\(key) must be a string or a list of strings")
                }
            }
            let composed = RFC2822Message.compose(
                from: params["from"]?.stringValue, to: try list("to"), cc: try list("cc"), bcc: try list("bcc"),
                subject: params["subject"]?.stringValue ?? "", body: params["body"]?.stringValue ?? "")
            let bytes: [UInt8]
            switch composed {
            case .success(let b): bytes = b
            case .failure(let e): throw e
            }
            let body = JSONValue.object(["raw": .string(Base64.encodeURL(bytes))]).serialized
            return ToolRequest(
                method: .POST, path: "/gmail/v1/users/me/messages/send", headers: ["Content-Type": "application/json"],
                body: ByteBuffer(string: body))
        default:
            throw .unknownAction("gmail_send actions are send, profile")
        }
    }

    public func authorize(_ request: inout UpstreamRequest, with credential: Credential) {
        request.headers.replaceOrAdd(name: "Authorization", value: "Bearer \(credential.reveal())")
    }

    public func traits(of call: ToolCall) -> CallTraits {
        call.action == "send"
            ? CallTraits(idempotent: false, cacheable: false, sideEffecting: true)
            : CallTraits(idempotent: true, cacheable: false, sideEffecting: false)
    }

    public func mockResponse(for call: ToolCall) -> UpstreamResponse {
        if call.action == "profile" {
            return Mock.json(["emailAddress": "agent@example.com", "messagesTotal": 42, "threadsTotal": 17, "historyId": "123456"])
        }
        let seed = Mock.hash(call.request.body?.readableBytesView ?? ByteBuffer().readableBytesView)
        return Mock.json([
            "id": .string(Mock.hex(seed)), "threadId": .string(Mock.hex(seed &* 31)), "labelIds": ["SENT"],
        ])
    }
}
