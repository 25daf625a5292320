/// What the mocked model does with a request's function tools and output format, the way a model that
/// honours them would, so an agent's loop runs against the embedded default: on a user turn with tools
/// it calls one function (the one the user names, else the first; the one `tool_choice` names; none
/// with `tool_choice: "none"`), with arguments that satisfy the function's parameters schema; once a
/// tool result is the last message it answers in text, quoting the result. A `json_schema` output format
/// is answered with a value of that schema, `json_object` with `{"reply": …}`.
struct MockToolCall: Equatable {
    let id: String
    let name: String
    let arguments: String
}

extension OpenAIAdapter {
    /// One function tool as the two APIs declare it: chat nests it under `function`, responses does not.
    struct MockFunction {
        let name: String
        let parameters: JSONValue
    }

    /// The function the mock calls, or nil to answer in text.
    static func mockToolCall(
        _ functions: [MockFunction], choice: JSONValue?, afterToolResult: Bool, userText: String, seed: UInt64
    ) -> MockToolCall? {
        guard !functions.isEmpty else { return nil }
        // Bounded: the text and the tool list are the agent's (a 32 MiB prompt, thousands of tools).
        let text = userText.prefix(4096).lowercased()
        let named = functions.prefix(128).first { !$0.name.isEmpty && $0.name.count <= 64 && text.contains($0.name.lowercased()) }
        let pick: MockFunction?
        switch choice {
        case .string("none")?:
            return nil
        case .string("required")?:
            pick = named ?? functions[0]
        case .object(let o)?:
            // {"type": "function", "function": {"name": …}} (chat) or {"type": "function", "name": …} (responses).
            guard let name = o["function"]?["name"]?.stringValue ?? o["name"]?.stringValue else {
                pick = afterToolResult ? nil : named ?? functions[0]
                break
            }
            pick = functions.first { $0.name == name }
        default:  // "auto", or not given
            pick = afterToolResult ? nil : named ?? functions[0]
        }
        guard let pick else { return nil }
        let arguments = MockSchemaInstance.instance(of: pick.parameters).serialized
        return MockToolCall(id: "call_mock\(Mock.hex(seed).prefix(16))", name: pick.name, arguments: arguments)
    }

    /// The chat request's function tools.
    static func chatFunctions(_ json: JSONValue) -> [MockFunction] {
        (json["tools"]?.arrayValue ?? []).compactMap { tool in
            guard (tool["type"]?.stringValue ?? "function") == "function", let f = tool["function"], let name = f["name"]?.stringValue else { return nil }
            return MockFunction(name: name, parameters: f["parameters"] ?? ["type": "object", "properties": [:]])
        }
    }

    /// The Responses request's function tools (hosted tools — web search, file search — are not mocked).
    static func responsesFunctions(_ json: JSONValue) -> [MockFunction] {
        (json["tools"]?.arrayValue ?? []).compactMap { tool in
            guard tool["type"]?.stringValue == "function", let name = tool["name"]?.stringValue else { return nil }
            return MockFunction(name: name, parameters: tool["parameters"] ?? ["type": "object", "properties": [:]])
        }
    }

    /// The answer's text in the requested format: a value of the schema, a JSON object, or `text`.
    static func mockFormatted(_ text: String, format: JSONValue?) -> String {
        switch format?["type"]?.stringValue {
        case "json_schema"?:
            // Chat: {"type": "json_schema", "json_schema": {"name", "schema"}}; responses: {"type", "name", "schema"}.
            let schema = format?["json_schema"]?["schema"] ?? format?["schema"] ?? ["type": "object", "properties": [:]]
            return MockSchemaInstance.instance(of: schema).serialized
        case "json_object"?:
            return JSONValue.object(["reply": .string(text)]).serialized
        default:
            return text
        }
    }

    /// A reply to a tool result: what the tool said, quoted in part.
    static func mockAnswer(toToolResult result: String) -> String {
        "Mock answer from the tool result: \(result.prefix(60))"
    }
}
