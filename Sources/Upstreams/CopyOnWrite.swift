/// A value kept behind one reference and copied only when it is changed while shared (as NIO's
/// `HTTPRequestHead` keeps its storage).
///
/// For the values handed from stage to stage of a request — the tool call, the upstream request, the
/// request record — and captured by the callbacks between them: a copy of their bare fields cost a
/// retain and a release per string, array and buffer in them, a copy of the box costs one. A type
/// wraps its plain fields struct in this and reaches them through `@dynamicMemberLookup`, so it reads
/// and behaves as the plain struct: a change to one copy never shows in another.
@dynamicMemberLookup
public struct CopyOnWrite<Value: Sendable>: Sendable {
    private final class Box: @unchecked Sendable {  // changed only while uniquely referenced
        var value: Value
        init(_ value: Value) { self.value = value }
    }

    private var box: Box

    public init(_ value: Value) { box = Box(value) }

    public var value: Value {
        get { box.value }
        _modify {
            if !isKnownUniquelyReferenced(&box) { box = Box(box.value) }
            yield &box.value
        }
    }

    public subscript<T>(dynamicMember key: KeyPath<Value, T>) -> T { box.value[keyPath: key] }

    public subscript<T>(dynamicMember key: WritableKeyPath<Value, T>) -> T {
        get { box.value[keyPath: key] }
        _modify { yield &value[keyPath: key] }
    }
}
