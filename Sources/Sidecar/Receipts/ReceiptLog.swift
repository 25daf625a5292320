#if canImport(Glibc)
import Glibc
#endif
import Crypto
import Foundation
import Logging
import NIOConcurrencyHelpers
import NIOPosix
import Synchronization
import Upstreams

/// `receipts:` — the signed, hash-chained record of every call.
struct ReceiptSettings: Sendable, Hashable {
    var enabled = true
    /// nil: `<state.dir>/receipts`.
    var dir: String?
    /// A file is closed and a new one begun past this size.
    var maxFileBytes = 64 * 1024 * 1024
    /// A batch is sealed (its last receipt signed) at least this often, and whenever it reaches `batch`.
    var sealInterval: Duration = .milliseconds(100)
    var batch = 256
}

/// The receipts of this sidecar: drafts from finished calls are queued (the event loops never wait on
/// the disk or on a signature), and one writer thread chains them, signs the last of each batch and
/// appends them to `receipts-<sidecar>-<first seq>.jsonl`. One Ed25519 signature per batch (≤ 256
/// receipts or 100 ms) instead of one per call keeps the cost a few microseconds a call, and still
/// covers every receipt: a signature signs its receipt's `prev`, and so the whole chain before it.
///
/// A backlog past `maxPending` is not dropped silently: the receipts lost are counted and the next
/// receipt written says how many (`lost`), so a gap is visible in the chain itself.
final class ReceiptLog: @unchecked Sendable {
    static let maxPending = 200_000

    let sidecar: String
    let dir: String
    let keyID: String
    private let key: Curve25519.Signing.PrivateKey
    private let settings: ReceiptSettings
    private let logger: Logger
    /// Told of each sealed head (seq, hash): stored in Redis so a truncation is visible fleet-wide.
    private let onSeal: @Sendable (Int64, String) -> Void
    /// The vault's version per tool, read once per batch (a credential from the environment has none).
    private let credentialVersions: @Sendable () -> [Tool: Int]

    /// Guarded by `state` (value 1: the writer should act now).
    private let state = ConditionLock(value: 0)
    private var pending: [ReceiptDraft] = []
    private var lost = 0
    private var stopping = false
    private var thread: NIOThreadPool?

    /// Touched by the writer thread only (and `stop` after it ended).
    private var chain: ReceiptChain
    private var fd: Int32 = -1
    private var fileBytes = 0
    private let head = Mutex<(Int64, String)>((0, ReceiptChain.genesis))

    init(
        settings: ReceiptSettings, stateDir: String, sidecar: String, logger: Logger, credentialVersions: @escaping @Sendable () -> [Tool: Int] = { [:] },
        onSeal: @escaping @Sendable (Int64, String) -> Void = { _, _ in }
    ) throws {
        self.settings = settings
        self.credentialVersions = credentialVersions
        self.sidecar = sidecar
        self.logger = logger
        self.onSeal = onSeal
        dir = settings.dir ?? (stateDir as NSString).appendingPathComponent("receipts")
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        key = try ReceiptKeys.loadOrCreate(dir: (stateDir as NSString).appendingPathComponent("keys"))
        keyID = ReceiptChain.keyID(key.publicKey)
        chain = try Self.resume(dir: dir, sidecar: sidecar, logger: logger)
        head.withLock { $0 = (chain.seq, chain.head) }
    }

    var publicKey: Curve25519.Signing.PublicKey { key.publicKey }
    var currentHead: (seq: Int64, hash: String) { head.withLock { $0 } }

    /// Queues a finished call's receipt. Never waits for the disk.
    func record(_ draft: ReceiptDraft) {
        state.lock()
        guard pending.count < Self.maxPending, !stopping else {
            lost += 1
            return state.unlock()
        }
        pending.append(draft)
        if pending.count >= settings.batch { state.unlock(withValue: 1) } else { state.unlock() }
    }

    func start() {
        thread = WorkerThread.start(lock: state, interval: settings.sealInterval, stopping: { self.stopping }, work: { self.writeBatch() })
    }

    /// Writes and seals what is queued, then stops the writer (at shutdown, after the last call).
    func stop() async {
        state.lock()
        stopping = true
        state.unlock(withValue: 1)
        if let thread { try? await thread.shutdownGracefully() }
        writeBatch()
        if fd >= 0 { close(fd) }
        fd = -1
    }

    /// Test hooks: write what is queued now, on the caller's thread (the writer thread is not started).
    func flushForTests() { writeBatch() }
    func closeForTests() {
        if fd >= 0 { close(fd) }
        fd = -1
    }


    private func writeBatch() {
        state.lock()
        let batch = pending
        pending.removeAll(keepingCapacity: true)
        let lostNow = lost
        lost = 0
        state.unlock()
        guard !batch.isEmpty || lostNow > 0 else { return }
        var out: [UInt8] = []
        out.reserveCapacity(batch.count * 700 + 128)
        let versions = credentialVersions()
        for (i, d) in batch.enumerated() {
            var draft = d
            if i == 0, lostNow > 0 { draft.lost = lostNow }
            if draft.upstreamContacted, let name = draft.tool, let tool = Tool(rawValue: name), tool.isBrokered {
                draft.credential = versions[tool].map { "\(name)@v\($0)" } ?? "\(name)@env"
            }
            chain.append(draft, sidecar: sidecar, keyID: keyID, signer: i == batch.count - 1 ? key : nil, into: &out)
            out.append(10)
        }
        if batch.isEmpty {
            // Only losses to report: a receipt of its own says so.
            var draft = ReceiptDraft(at: Int64(Date().timeIntervalSince1970 * 1000), requestID: "", status: 0, outcome: "receipts_lost")
            draft.lost = lostNow
            chain.append(draft, sidecar: sidecar, keyID: keyID, signer: key, into: &out)
            out.append(10)
        }
        append(out, firstSeq: chain.seq - Int64(max(batch.count, 1)) + 1)
        let sealed = (chain.seq, chain.head)
        head.withLock { $0 = sealed }
        onSeal(sealed.0, sealed.1)
    }

    private func append(_ bytes: [UInt8], firstSeq: Int64) {
        if fd < 0 || fileBytes >= settings.maxFileBytes {
            if fd >= 0 { close(fd) }
            let path = (dir as NSString).appendingPathComponent(Self.fileName(sidecar: sidecar, firstSeq: firstSeq))
            fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0o600)
            fileBytes = 0
            if fd < 0 {
                logger.error("receipts: cannot open the receipt file", metadata: ["file": "\(path)", "errno": "\(errno)"])
                return
            }
        }
        bytes.withUnsafeBufferPointer { buf in
            var offset = 0
            while offset < buf.count {
                let n = write(fd, buf.baseAddress! + offset, buf.count - offset)
                if n <= 0 {
                    if n < 0, errno == EINTR { continue }
                    logger.error("receipts: write failed", metadata: ["errno": "\(errno)"])
                    return
                }
                offset += n
            }
        }
        fileBytes += bytes.count
    }

    /// Where a fleet keeps each sidecar's sealed head (`<seq> <hash>`).
    static func headKey(_ sidecar: String) -> String { "sidecar:receipts:head:" + sidecar }

    /// `receipts-<sidecar>-<first seq, 12 digits>.jsonl`: names sort in chain order.
    static func fileName(sidecar: String, firstSeq: Int64) -> String {
        let digits = String(firstSeq)
        return "receipts-\(sidecar)-\(String(repeating: "0", count: max(0, 12 - digits.count)))\(digits).jsonl"
    }

    /// This sidecar's files in chain order.
    static func files(dir: String, sidecar: String) -> [String] {
        let prefix = "receipts-\(sidecar)-"
        return ((try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? [])
            .filter { $0.hasPrefix(prefix) && $0.hasSuffix(".jsonl") && Int64($0.dropFirst(prefix.count).dropLast(6)) != nil }.sorted()
    }

    /// The chain goes on from the last complete receipt of the newest file. A line cut short by a crash
    /// (never a complete receipt) is cut off, so the file stays verifiable.
    static func resume(dir: String, sidecar: String, logger: Logger) throws -> ReceiptChain {
        guard let last = files(dir: dir, sidecar: sidecar).last else { return ReceiptChain() }
        let path = (dir as NSString).appendingPathComponent(last)
        var data = try [UInt8](Data(contentsOf: URL(fileURLWithPath: path)))
        if let end = data.lastIndex(of: 10), end != data.count - 1 {
            logger.warning("receipts: an incomplete last line (a crash mid-write) was cut off", metadata: ["file": "\(path)", "bytes": "\(data.count - end - 1)"])
            data.removeSubrange((end + 1)...)
            try Data(data).write(to: URL(fileURLWithPath: path))
        } else if data.lastIndex(of: 10) == nil, !data.isEmpty {
            data.removeAll()
            try Data().write(to: URL(fileURLWithPath: path))
        }
        guard let line = data.dropLast().split(separator: 10).last, case .object(var body)? = JSONValue.parse(line),
            let seq = body["seq"]?.intValue
        else { return ReceiptChain() }
        body.removeValue(forKey: "sig")
        return ReceiptChain(seq: Int64(seq), head: Digest.sha256Hex(bytes: CanonicalJSON.serialize(.object(body))))
    }
}

/// The receipt signing key: `<state.dir>/keys/receipts-<key id>.key` (the raw Ed25519 seed in base64,
/// 0600 — the agent has no access to the state directory) and its `.pub` for verifiers.
enum ReceiptKeys {
    static func loadOrCreate(dir: String) throws -> Curve25519.Signing.PrivateKey {
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        let names = ((try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? []).filter { $0.hasPrefix("receipts-") && $0.hasSuffix(".key") }.sorted()
        if let name = names.last {
            let path = (dir as NSString).appendingPathComponent(name)
            let text = try String(contentsOfFile: path, encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines)
            guard let raw = Data(base64Encoded: text), let key = try? Curve25519.Signing.PrivateKey(rawRepresentation: raw) else {
                throw StartupError("\(path) is not a receipt signing key (base64 of a 32-byte Ed25519 seed)")
            }
            return key
        }
        let key = Curve25519.Signing.PrivateKey()
        let id = ReceiptChain.keyID(key.publicKey)
        let priv = (dir as NSString).appendingPathComponent("receipts-\(id).key")
        let pub = (dir as NSString).appendingPathComponent("receipts-\(id).pub")
        guard FileManager.default.createFile(atPath: priv, contents: Data(key.rawRepresentation.base64EncodedString().utf8), attributes: [.posixPermissions: 0o600]),
            FileManager.default.createFile(atPath: pub, contents: Data(key.publicKey.rawRepresentation.base64EncodedString().utf8), attributes: [.posixPermissions: 0o644])
        else { throw StartupError("cannot write the receipt signing key in \(dir)") }
        return key
    }

    /// Public keys from `.pub` files (a file or every `receipts-*.pub` of a directory), by key id.
    static func publicKeys(at path: String) throws -> [String: Curve25519.Signing.PublicKey] {
        var isDir: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDir) else { throw StartupError("\(path) does not exist") }
        let files =
            isDir.boolValue
            ? ((try? FileManager.default.contentsOfDirectory(atPath: path)) ?? []).filter { $0.hasPrefix("receipts-") && $0.hasSuffix(".pub") }
                .map { (path as NSString).appendingPathComponent($0) } : [path]
        var keys: [String: Curve25519.Signing.PublicKey] = [:]
        for file in files {
            let text = try String(contentsOfFile: file, encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines)
            guard let raw = Data(base64Encoded: text), let key = try? Curve25519.Signing.PublicKey(rawRepresentation: raw) else {
                throw StartupError("\(file) is not a receipt public key (base64 of 32 bytes)")
            }
            keys[ReceiptChain.keyID(key)] = key
        }
        return keys
    }
}
