import ArgumentParser
import Foundation

extension SidecarCommand {
    /// `sidecar ca export [--config FILE]`: prints the interception CA certificate, so it can be installed
    /// in an agent's trust before the sidecar ever runs (it is generated now if the state has none yet,
    /// exactly as the first `run` would).
    struct CA: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "ca", abstract: "The interception CA.", subcommands: [Export.self])

        struct Export: ParsableCommand {
            static let configuration = CommandConfiguration(abstract: "Print the interception CA certificate (PEM).")

            @Option(name: .long, help: "YAML configuration file; without it the embedded default is used.")
            var config: String?

            func run() throws {
                do {
                    let config = try ConfigLoader.load(path: config)
                    guard config.intercept.enabled else { throw ValidationError("interception is off (intercept.enabled: false)") }
                    try FileManager.default.createDirectory(atPath: config.stateDir, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
                    let (ca, _) = try InterceptCA.load(config.intercept, dir: config.caDir, sidecarID: config.auth.sidecarID, now: Date())
                    print(ca.pem, terminator: "")
                } catch {
                    FileHandle.standardError.write(Data("ca export: \(error)\n".utf8))
                    throw ExitCode(1)
                }
            }
        }
    }
}
