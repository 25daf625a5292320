import NIOCore
import NIOHTTP1

/// The mock of the legacy completions endpoint (`POST /v1/completions`, `client.completions.create`,
/// what LangChain's `OpenAI` LLM class and older agents call): a `text_completion` whose text answers the
/// prompt, cut to `max_tokens` words (the API's default is 16), or — with `stream: true` — its chunks
/// (`choices[0].text` per word, `finish_reason` on the last, a usage chunk when
/// `stream_options.include_usage` is set), ending in `data: [DONE]`.
extension OpenAIAdapter {
    func mockCompletion(_ json: JSONValue, seed: UInt64, model: String, promptTokens: Int, maxTokens: Int?, stream: Bool) -> UpstreamResponse {
        // The prompt: a string, or the first of a list of strings.
        let prompt = json["prompt"]?.stringValue ?? json["prompt"]?.arrayValue?.first?.stringValue ?? ""
        let words = Self.streamPieces("Mock completion of: \(prompt.prefix(40))")
        let pieces = Array(words.prefix(max(1, maxTokens ?? 16)))
        let text = pieces.joined()
        let finish = pieces.count < words.count ? "length" : "stop"
        let id = "cmpl-mock\(Mock.hex(seed))"
        let usage: JSONValue = [
            "prompt_tokens": .number(Double(promptTokens)), "completion_tokens": .number(Double(pieces.count)),
            "total_tokens": .number(Double(promptTokens + pieces.count)),
        ]
        func object(_ text: String, finish: JSONValue, usage: JSONValue = nil, choices: Bool = true) -> JSONValue {
            var o: [String: JSONValue] = [
                "id": .string(id), "object": "text_completion", "created": 1_700_000_000, "model": .string(model),
                "choices": choices ? [["text": .string(text), "index": 0, "logprobs": nil, "finish_reason": finish]] : [],
            ]
            if usage != .null { o["usage"] = usage }
            return .object(o)
        }
        guard stream else { return Mock.json(object(text, finish: .string(finish), usage: usage)) }
        var chunks: [ByteBuffer] = []
        for (i, piece) in pieces.enumerated() {
            let last = i == pieces.count - 1
            chunks.append(ByteBuffer(string: "data: \(object(piece, finish: last ? .string(finish) : nil).serialized)\n\n"))
        }
        if json["stream_options"]?["include_usage"]?.boolValue == true {
            chunks.append(ByteBuffer(string: "data: \(object("", finish: nil, usage: usage, choices: false).serialized)\n\n"))
        }
        chunks.append(ByteBuffer(string: "data: [DONE]\n\n"))
        return UpstreamResponse(status: .ok, headers: Mock.eventStreamHeaders, body: .chunks(chunks, delay: mockStreamDelay))
    }
}
