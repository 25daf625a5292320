import Foundation
import Upstreams

/// A setting that is valid and works, but that an operator most likely did not mean: it is named in a
/// warning line at start (the field path, as configuration errors are), never refused — an internal
/// plain-`http` LLM gateway or a fetch tool allowed into every range can be what a deployment wants.
struct ConfigWarning: Sendable, Hashable {
    let field: String
    let message: String
}

extension SidecarConfig {
    /// Checked once, at start. `fileMode` reads a file's permission bits (nil: no such file, or not
    /// readable — the loader reports that itself); tests give a table.
    func warnings(fileMode: (String) -> Int? = Self.fileMode) -> [ConfigWarning] {
        var out: [ConfigWarning] = []
        // A secret the operator brought in a file others may read is theirs too — as OpenSSH and
        // PostgreSQL judge key files, but named rather than refused: a Kubernetes secret volume mounts
        // 0644 unless told otherwise, and inside a one-user container that is what the operator meant.
        for (field, path) in [("admin.token_file", adminTokenFile), ("vault.kek_file", vault.kekFile), ("intercept.ca_key", intercept.caKey)] {
            guard let path, let mode = fileMode(path), mode & 0o077 != 0 else { continue }
            out.append(
                ConfigWarning(
                    field: field,
                    message: "\(path) holds a secret and is open to users other than its owner (mode \(String(mode & 0o777, radix: 8))); chmod 600 it (Kubernetes: defaultMode: 0400 on the secret's volume)"
                ))
        }
        for tool in Tool.allCases where tool.isBrokered {
            guard let t = tools[tool], t.mode == .live, t.baseURL.scheme == "http", !Self.isLoopback(t.baseURL.host) else { continue }
            out.append(
                ConfigWarning(
                    field: "tools.\(tool.rawValue).base_url",
                    message: "sends the \(tool.rawValue) credential in cleartext to \(t.baseURL.host); use https:// unless that network is trusted"))
        }
        for (i, cidr) in egressAllow.enumerated() where Self.metadataAddresses.contains(where: cidr.contains) {
            out.append(
                ConfigWarning(
                    field: "egress.allow_cidrs[\(i)]",
                    message: "\(cidr) lets http_fetch reach the cloud metadata service (169.254.169.254), where instance credentials live"))
        }
        // The egress proxy carries the brokered tools; http_fetch connects to the address its guard
        // checked, which a proxy resolving the name again would not be.
        if let proxy = upstreamProxy, tools[.httpFetch]?.mode == .live {
            out.append(
                ConfigWarning(
                    field: "upstream.proxy",
                    message: "carries serpapi, openai and gmail_send through \(proxy); http_fetch still connects straight to its destination (its SSRF guard checks the address it connects to), so on a host without its own route out it fails (or deny http_fetch in the policy)"
                ))
        }
        // Without authentication the proxy spends this host's credentials for whoever reaches it: on
        // loopback that is this host's processes; anywhere else, the network (Smokescreen's "open proxy").
        if !auth.required, !Self.isLoopback(proxyListen.host) {
            out.append(
                ConfigWarning(
                    field: "auth.required",
                    message:
                        "is false and the proxy listens on \(proxyListen), beyond this host: anyone who can reach it calls every tool with this sidecar's credentials, unauthenticated"
                ))
        }
        return out
    }

    /// A file's permission bits, nil when it cannot be read.
    static func fileMode(_ path: String) -> Int? {
        (try? FileManager.default.attributesOfItem(atPath: path))?[.posixPermissions] as? Int
    }

    /// AWS, GCP and Azure's instance metadata address, and AWS's IPv6 one.
    private static let metadataAddresses: [IPAddress] = [IPAddress.parse("169.254.169.254"), IPAddress.parse("fd00:ec2::254")].compactMap { $0 }

    private static func isLoopback(_ host: String) -> Bool {
        if host == "localhost" || host.hasSuffix(".localhost") { return true }
        return IPAddress.parse(host).flatMap(EgressGuard.internalRange(of:)) == "loopback"
    }
}
