import Foundation
import Emperor
import Store

/// What this node should host, from the desired state, against what its disk holds: a pure plan of
/// directives (create a home, write a file that differs, archive a home), plus the sub-Emperor vassal list for
/// the node's Emperor. Idempotent: planning twice against the result of the first plan gives nothing to do,
/// so a restarted node (or one replaying its local snapshot while the store has no quorum) converges
/// without restarting anything that runs.
public enum HostingReconciler {
    /// One container's home as the node finds it on disk: its managed files' contents by relative path.
    public struct Observed: Sendable, Equatable {
        public var files: [String: String]
        public init(files: [String: String]) { self.files = files }
    }

    public struct ManagedFile: Sendable, Equatable {
        public var path: String
        public var contents: String
        public var mode: UInt16
        /// Never logged (private keys).
        public var secret: Bool
    }

    public enum Directive: Sendable, Equatable {
        case createHome(uid: Int64, name: String)
        case writeFile(uid: Int64, file: ManagedFile)
        case archiveHome(uid: Int64)
    }

    /// The directories of a home (uwsgi.it's layout, §3.3), relative to it.
    public static let directories = ["vassals", "logs", "etc", "run", "tmp", ".ssh"]

    /// The files legion manages in a home; everything else is the customer's.
    public static func files(for container: DesiredState.Container, home: String, routes: HostingShortcuts.Routes) -> [ManagedFile] {
        var files = [
            ManagedFile(path: "etc/hostname", contents: container.name + "\n", mode: 0o644, secret: false),
            ManagedFile(path: "etc/domains", contents: (container.customerDomains ?? []).sorted().map { $0 + "\n" }.joined(), mode: 0o644, secret: false),
            ManagedFile(path: "etc/shortcuts.ini", contents: HostingShortcuts.render(home: home, routes: routes), mode: 0o644, secret: false),
            ManagedFile(path: ".ssh/uwsgi_authorized_keys", contents: sshKeysFile(container.sshKeys), mode: 0o600, secret: false),
        ]
        if let key = container.rsaKey, let pub = container.rsaPubkey {
            files.append(ManagedFile(path: "etc/uwsgi.key", contents: ensureNewline(key), mode: 0o600, secret: true))
            files.append(ManagedFile(path: "etc/uwsgi.pubkey", contents: ensureNewline(pub), mode: 0o644, secret: false))
        }
        return files
    }

    public static func plan(desired: [DesiredState.Container], observed: [Int64: Observed],
                            home: (Int64) -> String, routes: HostingShortcuts.Routes) -> [Directive] {
        var out: [Directive] = []
        let wanted = Set(desired.map(\.uid))
        precondition(wanted.count == desired.count, "one container per uid")
        for container in desired.sorted(by: { $0.uid < $1.uid }) {
            let seen = observed[container.uid]
            if seen == nil { out.append(.createHome(uid: container.uid, name: container.name)) }
            for file in files(for: container, home: home(container.uid), routes: routes) where seen?.files[file.path] != file.contents {
                out.append(.writeFile(uid: container.uid, file: file))
            }
        }
        for uid in observed.keys.sorted() where !wanted.contains(uid) {
            out.append(.archiveHome(uid: uid))
        }
        return out
    }

    /// One vassal per container for the node's Emperor: its sub-Emperor. The "mtime" is `last_reboot`, so
    /// bumping it (a reboot from the API) reloads the sub-Emperor, which exits and is started afresh.
    public static func vassals(desired: [DesiredState.Container], home: (Int64) -> String, uidOwned: Bool) -> [EmperorCore.VassalFile] {
        desired.sorted(by: { $0.uid < $1.uid }).map { c in
            EmperorCore.VassalFile(name: "\(c.uid)", path: home(c.uid), monitor: "store", mtimeNs: c.lastRebootMs * 1_000_000,
                                   uid: uidOwned ? UInt32(c.uid) : 0, gid: uidOwned ? UInt32(c.uid) : 0)
        }
    }

    static func sshKeysFile(_ raw: String?) -> String {
        guard let raw else { return "" }
        let lines = raw.split(whereSeparator: \.isNewline).map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
        return lines.map { $0 + "\n" }.joined()
    }

    static func ensureNewline(_ text: String) -> String { text.hasSuffix("\n") ? text : text + "\n" }
}
