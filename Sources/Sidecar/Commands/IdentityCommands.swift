import ArgumentParser
import Foundation
import Policy
import Upstreams

/// `sidecar keys init DIR`
struct Keys: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Manage the fleet and issuer keys.", subcommands: [Init.self])

    struct Init: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Create the fleet's RSA-2048 decryption key and an ES256 issuer key pair (private files 0600).")

        @Argument(help: "Directory to write the key files into.")
        var directory: String

        @Flag(help: "Add a new pair beside the keys already in the directory (rotation: tokens are then minted with the new pair).")
        var rotate = false

        /// A second `keys init` on a directory with keys used to add a pair without a word — and tokens
        /// minted there from then on were encrypted to a fleet key no sidecar had yet: every new token
        /// was refused. Adding a pair is rotation, and says so.
        func run() throws {
            let existing = ((try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? []).filter {
                ($0.hasPrefix("fleet-") || $0.hasPrefix("issuer-")) && $0.hasSuffix(".pem")
            }
            guard existing.isEmpty || rotate else {
                throw ValidationError(
                    "\(directory) already holds \(existing.count) key files; --rotate adds a new pair beside them (give every sidecar the new fleet key before minting with it)")
            }
            let generated = try KeyFiles.initialize(directory: directory)
            print("fleet key id:  \(generated.fleetKid)")
            print("issuer key id: \(generated.issuerKid)")
            for f in generated.files { print("wrote \(f)") }
            print("sidecars need fleet-*.key.pem and issuer-*.pub.pem; issuers need issuer-*.key.pem and fleet-*.pub.pem")
        }
    }
}

/// `sidecar token issue --agent ID --role R --ttl 15m [--scope tool:action ...]`
struct TokenCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "token", abstract: "Mint agent tokens.", subcommands: [Issue.self])

    struct Issue: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Print a token (needs only the issuer private key and the fleet public key).")

        @Option(help: "Agent id (the token's sub).") var agent: String
        @Option(help: "Role.") var role: String
        @Option(help: "Lifetime, e.g. 15m; at most auth.max_ttl.") var ttl: String = "15m"
        @Option(name: .customLong("scope"), help: "tool:action (repeatable) narrowing the role.") var scopes: [String] = []
        @Option(help: "Sidecar id the token is bound to (repeatable).") var sidecar: [String] = []
        @Option(help: "Directory with issuer-*.key.pem and fleet-*.pub.pem (default: <state.dir>/keys).") var keysDir: String?
        @Option(help: "Configuration file for issuer, audience, max_ttl and the state directory.") var config: String?

        func run() throws {
            // A token every sidecar would refuse (an empty `sub` or role) is not printed as if it worked.
            for (name, value) in [("--agent", agent), ("--role", role)] {
                guard (1...128).contains(value.utf8.count), value.unicodeScalars.allSatisfy({ $0.value > 0x20 && $0.value != 0x7F }) else {
                    throw ValidationError("\(name) must be 1 to 128 characters without spaces or control characters")
                }
            }
            let cfg = try ConfigLoader.load(path: config)
            guard let lifetime = DocumentReader.parseDuration(ttl), lifetime > .zero else {
                throw ValidationError("--ttl must be a duration like 15m")
            }
            guard lifetime <= cfg.auth.maxTTL else {
                throw ValidationError("--ttl exceeds auth.max_ttl (\(cfg.auth.maxTTL.components.seconds)s)")
            }
            let known = Set(Tool.allCases.flatMap { t in t.actions.map { "\(t.rawValue):\($0)" } + ["\(t.rawValue):*"] })
            for s in scopes where !known.contains(s) { throw ValidationError("unknown scope \(s)") }
            let keys = try KeyFiles.load(directory: keysDir ?? cfg.keysDir)
            guard let signing = keys.signing.last else { throw ValidationError("no issuer-*.key.pem found") }
            guard let encryption = keys.encryption.last else { throw ValidationError("no fleet-*.pub.pem found") }
            let now = Int64(Date().timeIntervalSince1970)
            let claims = TokenClaims(
                iss: cfg.auth.issuer, sub: agent, aud: [cfg.auth.audience], iat: now, nbf: now, exp: now + lifetime.components.seconds,
                jti: "tok_" + RequestID.generate().prefix(24), role: role, scopes: scopes.isEmpty ? nil : scopes,
                sidecars: sidecar.isEmpty ? nil : sidecar)
            print(try TokenMinter(signingKey: signing, encryptionKey: encryption).mint(claims))
        }
    }
}

/// `sidecar secrets seal --tool openai --from-env OPENAI_API_KEY --out FILE`
struct Secrets: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Manage sealed tool credentials.", subcommands: [Seal.self, NewKEK.self])

    struct Seal: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Seal a credential (AES-256-GCM under the key-encryption key) into a versioned vault entry.")

        @Option(help: "serpapi, openai or gmail_send.") var tool: String
        @Option(help: "Environment variable holding the secret.") var fromEnv: String?
        @Option(help: "File holding the secret (for Gmail: JSON {refresh_token, client_id, client_secret}).") var fromFile: String?
        @Option(help: "Output file, or a directory (the file is then <tool>-v<version>.sealed).") var out: String
        @Option(help: "api_key or oauth_refresh (default: oauth_refresh for gmail_send JSON, else api_key).") var kind: String?
        @Option(help: "Version; default one more than the highest sealed for the tool next to the output.") var version: Int?
        @Option(help: "Key-encryption key file (32 bytes or base64); default $KEK_BASE64.") var kekFile: String?

        func run() throws {
            guard let tool = Tool(rawValue: tool), tool.isBrokered else { throw ValidationError("--tool must be serpapi, openai or gmail_send") }
            if let version, version < 1 { throw ValidationError("--version must be 1 or more") }
            let env = ProcessInfo.processInfo.environment
            guard let kek = try KeyEncryptionKey.load(env: "KEK_BASE64", file: kekFile, environment: env) else {
                throw ValidationError("no key-encryption key: set KEK_BASE64 (sidecar secrets new-kek) or pass --kek-file")
            }
            var secret: [UInt8]
            switch (fromEnv, fromFile) {
            case (let name?, nil):
                guard let v = env[name], !v.isEmpty else { throw ValidationError("$\(name) is empty") }
                secret = Array(v.utf8)
            case (nil, let path?):
                secret = Array(try Data(contentsOf: URL(fileURLWithPath: path)))
            default:
                throw ValidationError("pass exactly one of --from-env and --from-file")
            }
            defer { for i in secret.indices { secret[i] = 0 } }
            let isJSON = (try? JSONDecoder().decode(OAuthRefreshSecret.self, from: Data(secret))) != nil
            let sealedKind: SealedEntry.Kind
            switch kind {
            case nil: sealedKind = (tool == .gmailSend && isJSON) ? .oauthRefresh : .apiKey
            case let k?:
                guard let parsed = SealedEntry.Kind(rawValue: k) else { throw ValidationError("--kind must be api_key or oauth_refresh") }
                sealedKind = parsed
            }
            if sealedKind == .oauthRefresh, !isJSON {
                throw ValidationError("oauth_refresh secrets are JSON {refresh_token, client_id, client_secret}")
            }
            // What the vault would refuse at start is refused here, when the operator is at hand: a Gmail
            // JSON missing a member was sealed as an API key (the JSON text as the bearer token), and a
            // key with a space or control character inside sealed fine and stopped every start later.
            if sealedKind == .apiKey {
                // Trimmed and checked as the vault reads it at start (`VaultContents`).
                let text = String(validating: secret, as: UTF8.self)?.trimmingCharacters(in: .whitespacesAndNewlines) ?? ""
                if tool == .gmailSend, text.hasPrefix("{") {
                    throw ValidationError("a gmail_send JSON secret needs refresh_token, client_id and client_secret (strings)")
                }
                guard !text.isEmpty, Credential.isHeaderSafe(text) else {
                    throw ValidationError("the secret is empty or has a space, control or non-ASCII character inside it, which no request header can carry (the value is not shown)")
                }
                secret = Array(text.utf8)
            }
            var isDirectory: ObjCBool = false
            let outIsDirectory = FileManager.default.fileExists(atPath: out, isDirectory: &isDirectory) && isDirectory.boolValue
            let directory = outIsDirectory ? out : (out as NSString).deletingLastPathComponent
            let v = version ?? VaultContents.nextVersion(for: tool, in: directory.isEmpty ? "." : directory)
            let entry = try SealedEntry.seal(secret, tool: tool, version: v, kind: sealedKind, kek: kek, now: Int64(Date().timeIntervalSince1970))
            let path = outIsDirectory ? (out as NSString).appendingPathComponent("\(tool.rawValue)-v\(v).sealed") : out
            // Never over an entry already sealed: the file named v1 came to hold v3, and v1 was gone.
            guard !FileManager.default.fileExists(atPath: path) else {
                throw ValidationError("\(path) exists; seal into the vault directory (the next version is chosen) or name a new file")
            }
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
            guard FileManager.default.createFile(atPath: path, contents: try encoder.encode(entry), attributes: [.posixPermissions: 0o600]) else {
                throw ValidationError("cannot write \(path)")
            }
            print("sealed \(tool.rawValue) v\(v) (\(sealedKind.rawValue)) into \(path)")
        }
    }

    struct NewKEK: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "new-kek", abstract: "Print a fresh random key-encryption key (base64).")
        func run() { print(KeyEncryptionKey.generate()) }
    }
}
