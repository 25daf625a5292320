import NIOCore
import NIOHTTP1

/// The mock of moderations (`POST /v1/moderations`), shaped as `omni-moderation-latest` answers: one
/// result per input string (one for a multimodal list), every category present. So that an agent's
/// guardrail can be tried on both branches without the real API, a text containing "kill" is flagged
/// for `violence`; every other text passes.
extension OpenAIAdapter {
    static let moderationCategories = [
        "harassment", "harassment/threatening", "hate", "hate/threatening", "illicit", "illicit/violent", "self-harm",
        "self-harm/intent", "self-harm/instructions", "sexual", "sexual/minors", "violence", "violence/graphic",
    ]

    static func mockModeration(_ json: JSONValue, seed: UInt64, model: String?) -> UpstreamResponse {
        let texts: [String]
        switch json["input"] {
        case .string(let s)?: texts = [s]
        case .array(let items)? where !items.isEmpty && items.allSatisfy({ $0.stringValue != nil }): texts = items.compactMap(\.stringValue)
        case .array(let items)? where !items.isEmpty:
            // Multimodal: one result for the whole list, from its text parts.
            texts = [items.compactMap { $0["text"]?.stringValue }.joined(separator: " ")]
        default: return Mock.openAIError("mock: input must be a string, a list of strings or a list of content parts")
        }
        let results: [JSONValue] = texts.map { text in
            let violent = text.lowercased().contains("kill")
            var categories: [String: JSONValue] = [:]
            var scores: [String: JSONValue] = [:]
            var inputTypes: [String: JSONValue] = [:]
            for name in moderationCategories {
                let hit = violent && name == "violence"
                categories[name] = .bool(hit)
                scores[name] = .number(hit ? 0.91 : 0.0001)
                inputTypes[name] = ["text"]
            }
            return [
                "flagged": .bool(violent), "categories": .object(categories), "category_scores": .object(scores),
                "category_applied_input_types": .object(inputTypes),
            ]
        }
        return Mock.json([
            "id": .string("modr-mock-\(Mock.hex(seed))"), "model": .string(model ?? "omni-moderation-latest"), "results": .array(results),
        ])
    }
}
