import NIOCore
import NIOHTTP1

/// The mocks of image generation (`POST /v1/images/generations`), edits and variations, speech
/// (`POST /v1/audio/speech`), transcription and translation, shaped as OpenAI answers them, so an agent
/// with an image or voice tool runs against the embedded default: `gpt-image-*` models answer base64 PNGs
/// with token usage; DALL·E models a URL, or base64 with `response_format: b64_json`. Speech is 0.1 s of
/// silence: a WAV file for `wav`, raw 24 kHz 16-bit samples for `pcm`, MPEG audio frames otherwise. A
/// transcription names the file's size, as JSON, verbose JSON, plain text, SRT or WebVTT, or streamed
/// (`stream=true`) as `transcript.text.delta` events and a `transcript.text.done` with token usage.
/// Malformed calls get OpenAI's 400 error shape.
extension OpenAIAdapter {
    /// A 1×1 PNG: what every mocked image is.
    static let mockPNGBase64 = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=="

    static func mockImages(_ json: JSONValue, seed: UInt64) -> UpstreamResponse {
        guard let prompt = json["prompt"]?.stringValue, !prompt.isEmpty else { return Mock.openAIError("mock: prompt is required") }
        let model = json["model"]?.stringValue ?? "dall-e-2"
        let count = json["n"]?.intValue ?? 1
        guard (1...10).contains(count) else { return Mock.openAIError("mock: n must be between 1 and 10") }
        let tokenBilled = model.hasPrefix("gpt-image")
        let base64 = tokenBilled || json["response_format"]?.stringValue == "b64_json"
        let images: [JSONValue] = (0..<count).map { i in
            base64
                ? ["b64_json": .string(mockPNGBase64)]
                : ["url": .string("https://mock.openai.invalid/images/\(Mock.hex(seed &+ UInt64(i))).png"), "revised_prompt": .string(prompt)]
        }
        var answer: [String: JSONValue] = ["created": 1_700_000_000, "data": .array(images)]
        if tokenBilled {
            let input = max(1, tokenCount(prompt))
            let output = 272 * count
            answer["usage"] = [
                "input_tokens": .number(Double(input)), "output_tokens": .number(Double(output)), "total_tokens": .number(Double(input + output)),
                "input_tokens_details": ["text_tokens": .number(Double(input)), "image_tokens": 0],
            ]
        }
        return Mock.json(.object(answer))
    }

    static func mockSpeech(_ json: JSONValue) -> UpstreamResponse {
        guard let input = json["input"]?.stringValue, !input.isEmpty else { return Mock.openAIError("mock: input is required") }
        guard json["voice"] != nil else { return Mock.openAIError("mock: voice is required") }
        let format = json["response_format"]?.stringValue ?? "mp3"
        let samples = [UInt8](repeating: 0, count: 4800)  // 0.1 s of 24 kHz 16-bit mono silence
        let (type, bytes): (String, [UInt8])
        switch format {
        case "wav": (type, bytes) = ("audio/wav", wavHeader(dataBytes: samples.count, sampleRate: 24_000) + samples)
        case "pcm": (type, bytes) = ("audio/pcm", samples)
        default:
            // MPEG-1 Layer III frames, 128 kbit/s, 44.1 kHz, mono, with no audio data: silence.
            let frame: [UInt8] = [0xFF, 0xFB, 0x90, 0xC4] + [UInt8](repeating: 0, count: 413)
            (type, bytes) = ("audio/mpeg", Array([[UInt8]](repeating: frame, count: 4).joined()))
        }
        return UpstreamResponse(
            status: .ok, headers: HTTPHeaders([("Content-Type", type), ("Content-Length", String(bytes.count))]), body: .bytes(ByteBuffer(bytes: bytes)))
    }

    /// A RIFF/WAVE header for 16-bit mono PCM.
    static func wavHeader(dataBytes: Int, sampleRate: Int) -> [UInt8] {
        func le32(_ v: Int) -> [UInt8] { (0..<4).map { UInt8(truncatingIfNeeded: v >> (8 * $0)) } }
        func le16(_ v: Int) -> [UInt8] { (0..<2).map { UInt8(truncatingIfNeeded: v >> (8 * $0)) } }
        return Array("RIFF".utf8) + le32(36 + dataBytes) + Array("WAVEfmt ".utf8) + le32(16) + le16(1) + le16(1) + le32(sampleRate)
            + le32(sampleRate * 2) + le16(2) + le16(16) + Array("data".utf8) + le32(dataBytes)
    }

    /// The form fields the upload mocks answer from.
    static let uploadMockFields: Set<String> = ["model", "prompt", "n", "response_format", "stream", "size"]

    func mockUpload(_ call: ToolCall) -> UpstreamResponse {
        guard let form = try? Self.uploadForm(call.request, names: Self.uploadMockFields) else { return Mock.openAIError("mock: not a form") }
        guard form.files >= 1 else { return Mock.openAIError("mock: a file is required") }
        let seed = Mock.hash(call.request.body?.readableBytesView ?? ByteBuffer().readableBytesView)
        switch call.action {
        case "image_edits", "image_variations":
            var json: [String: JSONValue] = ["prompt": .string(form.fields["prompt"] ?? (call.action == "image_variations" ? "a variation" : ""))]
            if let model = form.fields["model"] { json["model"] = .string(model) }
            if let n = form.fields["n"] {
                guard let count = Int(n) else { return Mock.openAIError("mock: n must be an integer") }
                json["n"] = .number(Double(count))
            }
            if let format = form.fields["response_format"] { json["response_format"] = .string(format) }
            return Self.mockImages(.object(json), seed: seed)
        default:
            guard let model = form.fields["model"] else { return Mock.openAIError("mock: model is required") }
            let bytes = call.request.body?.readableBytes ?? 0
            let verb = call.action == "translations" ? "translation" : "transcription"
            let text = "Mock \(verb) of \(bytes) bytes of audio."
            let tokens: JSONValue = [
                "type": "tokens", "input_tokens": .number(Double(max(1, bytes / 1000))), "output_tokens": .number(Double(Self.tokenCount(text))),
                "total_tokens": .number(Double(max(1, bytes / 1000) + Self.tokenCount(text))),
            ]
            if form.fields["stream"] == "true", call.action == "transcriptions" {
                var events = Self.streamPieces(text).map { piece in
                    ByteBuffer(string: "data: \(JSONValue.object(["type": "transcript.text.delta", "delta": .string(piece)]).serialized)\n\n")
                }
                events.append(ByteBuffer(string: "data: \(JSONValue.object(["type": "transcript.text.done", "text": .string(text), "usage": tokens]).serialized)\n\n"))
                return UpstreamResponse(status: .ok, headers: Mock.eventStreamHeaders, body: .chunks(events, delay: mockStreamDelay))
            }
            let usage: JSONValue = model.hasPrefix("whisper") ? ["type": "duration", "seconds": 1] : tokens
            func plain(_ body: String, _ type: String) -> UpstreamResponse {
                UpstreamResponse(
                    status: .ok, headers: HTTPHeaders([("Content-Type", type), ("Content-Length", String(body.utf8.count))]),
                    body: .bytes(ByteBuffer(string: body)))
            }
            switch form.fields["response_format"] ?? "json" {
            case "json": return Mock.json(["text": .string(text), "usage": usage])
            case "verbose_json":
                return Mock.json([
                    "task": .string(call.action == "translations" ? "translate" : "transcribe"), "language": "english", "duration": 1,
                    "text": .string(text), "segments": [], "usage": usage,
                ])
            case "text": return plain(text + "\n", "text/plain; charset=utf-8")
            case "srt": return plain("1\n00:00:00,000 --> 00:00:01,000\n\(text)\n\n", "text/plain; charset=utf-8")
            case "vtt": return plain("WEBVTT\n\n00:00:00.000 --> 00:00:01.000\n\(text)\n\n", "text/vtt; charset=utf-8")
            default: return Mock.openAIError("mock: response_format must be json, text, srt, verbose_json or vtt")
            }
        }
    }
}
