import Foundation

/// Files of this repository that tests hold the code to (the README's tables).
enum Repository {
    /// The repository root, found from this file's own path.
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().path

    static func readme() throws -> String { try String(contentsOfFile: root + "/README.md", encoding: .utf8) }
}
