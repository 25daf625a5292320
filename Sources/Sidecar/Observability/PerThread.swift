#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// One instance of `Value` per thread, made on first use and released when the thread ends: state that
/// the hot path mutates on every request (a random generator, a formatted-second cache) without a lock.
final class PerThread<Value: AnyObject>: Sendable {
    private let key: pthread_key_t
    private let make: @Sendable () -> Value

    init(_ make: @escaping @Sendable () -> Value) {
        var key = pthread_key_t()
        pthread_key_create(&key) { if let p = $0 { Unmanaged<AnyObject>.fromOpaque(p).release() } }
        self.key = key
        self.make = make
    }

    var value: Value {
        if let raw = pthread_getspecific(key) { return Unmanaged<Value>.fromOpaque(raw).takeUnretainedValue() }
        let fresh = make()
        pthread_setspecific(key, Unmanaged.passRetained(fresh).toOpaque())
        return fresh
    }
}
