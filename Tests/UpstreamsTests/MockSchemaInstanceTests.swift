import Testing

@testable import Upstreams

/// The mock's value for a schema: what a model bound by the schema could answer (tool arguments, typed
/// outputs), so an SDK that validates it (pydantic, zod) accepts it.
@Suite("Mock schema instances")
struct MockSchemaInstanceTests {
    static func instance(_ schema: String) -> String {
        MockSchemaInstance.instance(of: JSONValue.parse(Array(schema.utf8))!).serialized
    }

    @Test(arguments: [
        (##"{"type":"object","properties":{"city":{"type":"string"},"n":{"type":"integer"}}}"##, ##"{"city":"mock city","n":1}"##),
        (##"{"type":"integer","minimum":3,"maximum":9}"##, "3"),
        (##"{"type":"integer","maximum":0}"##, "0"),
        (##"{"type":"number","exclusiveMinimum":5}"##, "6"),
        (##"{"type":"number","maximum":-5}"##, "-5"),
        (##"{"type":"integer","minimum":2.5,"maximum":9}"##, "3"),
        (##"{"type":"integer","maximum":-2.5}"##, "-3"),
        (##"{"type":"string","enum":["f","c"]}"##, ##""f""##),
        (##"{"const":"fixed"}"##, ##""fixed""##),
        (##"{"type":["null","boolean"]}"##, "true"),
        (##"{"anyOf":[{"type":"null"},{"type":"string","format":"date"}]}"##, ##""2025-01-01""##),
        (##"{"type":"array","items":{"type":"string","format":"email"},"minItems":2}"##, ##"["mock@example.com","mock@example.com"]"##),
        (##"{"type":"array","items":{"type":"boolean"},"maxItems":0}"##, "[]"),
        (##"{"type":"array","items":{"type":"boolean"},"minItems":3,"maxItems":2}"##, "[true,true]"),
        (##"{"type":"string","minLength":12}"##, ##""mock valuexx""##),
        (##"{"type":"string","maxLength":3}"##, ##""moc""##),
        // pydantic's nested models: a reference into $defs.
        (##"{"$defs":{"Day":{"type":"object","properties":{"high":{"type":"number"}}}},"type":"object","properties":{"days":{"type":"array","items":{"$ref":"#/$defs/Day"}}}}"##,
         ##"{"days":[{"high":1}]}"##),
        (##"{"properties":{"a/b":{"$ref":"#/definitions/x~1y"}},"definitions":{"x/y":{"type":"boolean"}}}"##, ##"{"a/b":true}"##),
        (##"{"$ref":"#/$defs/missing"}"##, "null"),
        (##"{}"##, ##""mock value""##),
    ])
    func satisfiesTheSchema(_ schema: String, _ expected: String) {
        #expect(Self.instance(schema) == expected, "\(schema)")
    }

    /// Arrays of arrays of eight items each, twelve deep, would be 8^12 values: the value stops growing
    /// at a fixed number of nodes, quickly.
    @Test func nestedArraysStayBounded() {
        var schema = ##"{"type":"string"}"##
        for _ in 0..<12 { schema = ##"{"type":"array","minItems":8,"items":"## + schema + "}" }
        let text = Self.instance(schema)
        #expect(text.utf8.count < 150_000)
        let defs = ##"{"$defs":{"D":{"type":"object","properties":{"a":{"$ref":"#/$defs/E"},"b":{"$ref":"#/$defs/E"},"c":{"$ref":"#/$defs/E"}}},"E":{"type":"array","minItems":8,"items":{"$ref":"#/$defs/D"}}},"$ref":"#/$defs/D"}"##
        #expect(Self.instance(defs).utf8.count < 150_000)
    }

    /// A model that contains itself ends in null at a fixed depth instead of recursing forever.
    @Test func aSelfReferenceEnds() {
        let text = Self.instance(##"{"$defs":{"N":{"type":"object","properties":{"next":{"$ref":"#/$defs/N"}}}},"$ref":"#/$defs/N"}"##)
        #expect(text.hasSuffix("null" + String(repeating: "}", count: 6)))
    }
}
