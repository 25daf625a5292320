import ArgumentParser
import Foundation
import Logging
import Policy

/// `sidecar run | check-config | version`.
public struct SidecarCommand: AsyncParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "sidecar",
        abstract: "A proxy beside each AI agent: authenticates it, enforces policy, injects credentials, calls its tools.",
        subcommands: [Run.self, CheckConfig.self, CheckPolicy.self, Version.self, Keys.self, TokenCommand.self, Secrets.self, CA.self, Receipts.self, Bench.self],
        defaultSubcommand: Run.self)

    public init() {}

    struct Run: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Run the sidecar (embedded default: mock upstreams, no Redis).")

        @Option(name: .long, help: "YAML configuration file; without it the embedded default is used.")
        var config: String?

        func run() async throws {
            let loaded: SidecarConfig
            do {
                loaded = try ConfigLoader.load(path: config)
            } catch {
                FileHandle.standardError.write(Data("configuration error: \(error)\n".utf8))
                throw ExitCode(2)
            }
            let level = Logger.Level(rawValue: loaded.logLevel) ?? .info
            LoggingSystem.bootstrap { label in JSONLogHandler(label: label, level: level) }
            do {
                try await SidecarApp.run(config: loaded)
            } catch {
                // One line naming what failed and where; everything started was shut down already.
                Logger(label: "sidecar").critical("sidecar failed", metadata: ["error": "\(error)"])
                throw ExitCode(1)
            }
        }
    }

    struct CheckConfig: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "check-config", abstract: "Validate a configuration file; exit 1 naming the offending field.")

        @Argument(help: "YAML configuration file.")
        var file: String

        func run() throws {
            do {
                let config = try ConfigLoader.load(path: file, environment: [:])
                // The operator's interception CA is read and checked as `run` would (a generated one is
                // made at first start, so there is nothing to check yet).
                if config.intercept.enabled, let cert = config.intercept.caCert, let key = config.intercept.caKey {
                    _ = try InterceptCA.read(certPath: cert, keyPath: key, now: Date(), field: "intercept")
                }
                if let policy = config.policyFile {
                    let text = try PolicyRuntime.read(policy)
                    do { _ = try PolicyRuntime.compile(text) } catch {
                        throw DocumentError(path: "policy.file(\(policy))." + error.path, message: error.message)
                    }
                }
                for warning in config.warnings() { print("warning: \(warning.field): \(warning.message)") }
                print("ok: \(file)")
            } catch {
                FileHandle.standardError.write(Data("\(file): \(error)\n".utf8))
                throw ExitCode(1)
            }
        }
    }

    struct CheckPolicy: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "check-policy", abstract: "Validate a policy document; exit 1 naming the offending field.")

        @Argument(help: "YAML policy file.")
        var file: String

        func run() throws {
            do {
                let compiled = try PolicyRuntime.compile(PolicyRuntime.read(file))
                print("ok: \(file) (roles: \(compiled.roleNames.joined(separator: ", ")); hash \(compiled.hash.prefix(16)))")
            } catch {
                FileHandle.standardError.write(Data("\(file): \(error)\n".utf8))
                throw ExitCode(1)
            }
        }
    }

    struct Version: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Print the version.")
        func run() { print("sidecar \(GatewayMetrics.version)") }
    }
}

extension SidecarCommand {
    /// Parses the command line and runs the chosen subcommand (async ones asynchronously).
    ///
    /// `main.swift` calls this instead of `main()` because it must install NIO's executor first, and
    /// top-level code resolves `run()` to the synchronous overload.
    public static func runMain() async {
        do {
            var command = try parseAsRoot()
            if var asyncCommand = command as? any AsyncParsableCommand {
                try await asyncCommand.run()
            } else {
                try command.run()
            }
        } catch {
            exit(withError: error)
        }
    }
}
