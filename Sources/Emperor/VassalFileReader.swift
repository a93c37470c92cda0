import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// Scans monitors for vassal files and checks each before it may run: extension, name length, regular file,
/// symlinks confined to their directory, size, ini syntax, the hosting shortcuts' domains. Pure reads; what it
/// finds wrong becomes the file's `problem`, logged once by the core.
public struct VassalFileReader: Sendable {
    public var settings: EmperorSettings
    /// Symlinked vassal files must resolve inside their monitor directory (containers).
    public var confineSymlinks: Bool

    public init(settings: EmperorSettings, confineSymlinks: Bool = false) {
        self.settings = settings
        self.confineSymlinks = confineSymlinks
    }

    /// The shortcut options whose first argument is a domain the vassal attaches.
    public static let domainShortcuts: Set<String> = [
        "domain", "cluster-domain", "ssl-domain", "ssl-cluster-domain", "ssl-ca-domain", "ssl-ca-cluster-domain",
    ]

    public func scan() -> [EmperorCore.VassalFile] {
        var reader = self
        if let path = settings.ownedDomainsFile {
            // Missing or unreadable: no domain is owned (refuse rather than allow).
            let text = (try? String(contentsOfFile: path, encoding: .utf8)) ?? ""
            reader.settings.ownedDomains = Set(text.split(whereSeparator: \.isNewline)
                .map { $0.trimmingCharacters(in: .whitespaces).lowercased() }.filter { !$0.isEmpty })
        }
        return reader.scanMonitors()
    }

    func scanMonitors() -> [EmperorCore.VassalFile] {
        var out: [EmperorCore.VassalFile] = []
        for monitor in settings.monitors {
            var isDir: ObjCBool = false
            if FileManager.default.fileExists(atPath: monitor, isDirectory: &isDir), isDir.boolValue {
                let dir = URL(fileURLWithPath: monitor).resolvingSymlinksInPath().path
                guard let names = try? FileManager.default.contentsOfDirectory(atPath: dir) else { continue }
                for name in names.sorted() {
                    if let file = read(name: name, path: dir + "/" + name, monitor: dir, directory: dir) { out.append(file) }
                }
            } else {
                for path in Self.glob(monitor) {
                    let dir = URL(fileURLWithPath: path).deletingLastPathComponent().path
                    if let file = read(name: path, path: path, monitor: monitor, directory: dir) { out.append(file) }
                }
            }
        }
        return out
    }

    func read(name: String, path: String, monitor: String, directory: String) -> EmperorCore.VassalFile? {
        let base = (path as NSString).lastPathComponent
        guard let dot = base.lastIndex(of: "."), base.utf8.count < 255 else { return nil }
        let ext = String(base[base.index(after: dot)...]).lowercased()
        guard EmperorSettings.extensions[ext] != nil else { return nil }   // .skel, editors' backups… ignored
        var st = stat()
        guard lstat(path, &st) == 0 else { return nil }
        var file = EmperorCore.VassalFile(name: name, path: path, monitor: monitor, mtimeNs: Self.mtime(st),
                                          uid: st.st_uid, gid: st.st_gid)
        if (st.st_mode & S_IFMT) == S_IFLNK {
            guard settings.followSymlinks else {
                file.problem = "it is a symbolic link; copy the file into \(directory) instead"
                return file
            }
            let target = URL(fileURLWithPath: path).resolvingSymlinksInPath().path
            if confineSymlinks, !target.hasPrefix(directory + "/") {
                file.problem = "it is a symbolic link to \(target), outside \(directory); vassal files must live in the vassals directory"
                return file
            }
            guard stat(path, &st) == 0 else {
                file.problem = "it is a dangling symbolic link"
                return file
            }
            file.mtimeNs = max(file.mtimeNs, Self.mtime(st))
            file.uid = st.st_uid
            file.gid = st.st_gid
        }
        guard (st.st_mode & S_IFMT) == S_IFREG else { return nil }
        if Int(st.st_size) > settings.maxFileBytes {
            file.problem = "it is \(st.st_size) bytes, over the \(settings.maxFileBytes)-byte limit for a vassal file"
            return file
        }
        if let data = FileManager.default.contents(atPath: path) { file.contentHash = Self.fnv1a(data) }
        if ext == "ini" {
            guard let data = FileManager.default.contents(atPath: path) else {
                file.problem = "it cannot be read (check its permissions)"
                return file
            }
            guard let text = String(data: data, encoding: .utf8) else {
                file.problem = "it is not UTF-8 text"
                return file
            }
            switch IniVassal.parse(text) {
            case .failure(let error):
                file.problem = error.description
            case .success(let ini):
                file.binary = ini.value("binary", in: "legion")
                if let n = (ini.value("processes", in: "uwsgi") ?? ini.value("workers", in: "uwsgi")).flatMap({ Int($0) }) { file.workers = max(1, n) }
                if let owned = settings.ownedDomains {
                    // uWSGI silently ignores unknown ini options: a misspelt shortcut would run a vassal that
                    // subscribes nothing. Catch the near misses.
                    for (option, _) in ini.options(in: "uwsgi") {
                        let key = option.replacingOccurrences(of: "_", with: "-").lowercased()
                        if Self.domainShortcuts.contains(key) { continue }
                        if let near = Self.domainShortcuts.sorted().first(where: { Self.editDistance(key, $0) <= 2 }) {
                            file.problem = "unknown option '\(option)': did you mean '\(near)'? (hosting shortcuts: \(Self.domainShortcuts.sorted().joined(separator: ", ")))"
                            break
                        }
                    }
                    if file.problem != nil { return file }
                    for (option, value) in ini.options(in: "uwsgi") where Self.domainShortcuts.contains(option) {
                        let domain = value.split(separator: " ").first.map(String.init) ?? ""
                        if domain.isEmpty {
                            file.problem = "line '\(option) =' has no domain; write e.g. '\(option) = example.com'"
                        } else if !Self.owns(domain, owned) {
                            file.problem = "'\(option) = \(domain)': the domain \(domain) is not registered to this customer; add it with the API (or legion admin domain add) first"
                            file.revoked = true
                        }
                        if file.problem != nil { break }
                    }
                }
            }
        }
        return file
    }

    /// Exact names, and `.example.com` entries as dotsplit wildcards for their subdomains.
    static func owns(_ domain: String, _ owned: Set<String>) -> Bool {
        let name = domain.lowercased()
        if owned.contains(name) { return true }
        // "a.b.example.com" is covered by ".b.example.com" or ".example.com" (uWSGI's dotsplit wildcards).
        var index = name.startIndex
        while let dot = name[index...].firstIndex(of: ".") {
            if dot != name.startIndex, owned.contains(String(name[dot...])) { return true }
            index = name.index(after: dot)
        }
        return false
    }

    /// Levenshtein distance (short option names only).
    static func editDistance(_ a: String, _ b: String) -> Int {
        let x = Array(a.utf8), y = Array(b.utf8)
        guard !x.isEmpty else { return y.count }
        guard !y.isEmpty else { return x.count }
        var previous = Array(0...y.count)
        for i in 1...x.count {
            var current = [i] + Array(repeating: 0, count: y.count)
            for j in 1...y.count {
                current[j] = min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (x[i - 1] == y[j - 1] ? 0 : 1))
            }
            previous = current
        }
        return previous[y.count]
    }

    static func fnv1a(_ data: Data) -> UInt64 {
        var hash: UInt64 = 0xcbf2_9ce4_8422_2325
        for byte in data {
            hash ^= UInt64(byte)
            hash &*= 0x0000_0100_0000_01B3
        }
        return hash == 0 ? 1 : hash
    }

    static func mtime(_ st: stat) -> Int64 {
        Int64(st.st_mtim.tv_sec) * 1_000_000_000 + Int64(st.st_mtim.tv_nsec)
    }

    static func glob(_ pattern: String) -> [String] {
        var result = glob_t()
        defer { globfree(&result) }
        guard Glibc.glob(pattern, 0, nil, &result) == 0 else { return [] }
        var paths: [String] = []
        for i in 0..<Int(result.gl_pathc) {
            if let p = result.gl_pathv[i] { paths.append(String(cString: p)) }
        }
        return paths
    }
}

/// A vassal's ini file as uWSGI reads it: `[section]` headers, `key = value` lines, `;`/`#` comments.
public struct IniVassal: Sendable {
    public var entries: [(section: String, key: String, value: String)] = []

    public struct SyntaxError: Error, CustomStringConvertible, Sendable {
        public var line: Int
        public var text: String
        public var description: String { "line \(line) is not 'key = value', a [section] or a comment: \(text.prefix(80))" }
    }

    public static func parse(_ text: String) -> Result<IniVassal, SyntaxError> {
        var ini = IniVassal()
        var section = ""
        for (index, raw) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            let line = raw.trimmingCharacters(in: .whitespaces).trimmingCharacters(in: CharacterSet(charactersIn: "\r"))
            if line.isEmpty || line.hasPrefix(";") || line.hasPrefix("#") { continue }
            if line.hasPrefix("[") {
                guard line.hasSuffix("]"), line.count > 2 else { return .failure(SyntaxError(line: index + 1, text: line)) }
                section = String(line.dropFirst().dropLast())
                continue
            }
            guard let eq = line.firstIndex(of: "=") else {
                // uWSGI takes a bare key as a boolean flag ("master" = "master = true").
                if line.allSatisfy({ $0.isLetter || $0.isNumber || $0 == "-" || $0 == "_" }) {
                    ini.entries.append((section, line, "true"))
                    continue
                }
                return .failure(SyntaxError(line: index + 1, text: line))
            }
            let key = line[..<eq].trimmingCharacters(in: .whitespaces)
            let value = line[line.index(after: eq)...].trimmingCharacters(in: .whitespaces)
            guard !key.isEmpty else { return .failure(SyntaxError(line: index + 1, text: line)) }
            ini.entries.append((section, key, value))
        }
        return .success(ini)
    }

    public func options(in section: String) -> [(String, String)] {
        entries.filter { $0.section == section }.map { ($0.key, $0.value) }
    }

    public func value(_ key: String, in section: String) -> String? {
        entries.last { $0.section == section && $0.key == key }?.value
    }
}
