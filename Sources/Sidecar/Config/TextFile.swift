import Foundation

/// Reads an operator's text file (configuration, policy, keys, a CA) and, when it cannot, says why —
/// missing, a directory, not permitted, not UTF-8 — instead of one "cannot read" for all of them.
enum TextFile {
    struct Failure: Error, CustomStringConvertible {
        let path: String
        let reason: String
        var description: String { "cannot read \(path): \(reason)" }
    }

    static func read(_ path: String) throws(Failure) -> String {
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory) else { throw Failure(path: path, reason: "no such file") }
        guard !isDirectory.boolValue else { throw Failure(path: path, reason: "it is a directory") }
        guard FileManager.default.isReadableFile(atPath: path) else { throw Failure(path: path, reason: "permission denied") }
        let data: Data
        do { data = try Data(contentsOf: URL(fileURLWithPath: path)) } catch {
            throw Failure(path: path, reason: "the read failed")
        }
        guard let text = String(validating: data, as: UTF8.self) else { throw Failure(path: path, reason: "not UTF-8 text") }
        return text
    }
}
