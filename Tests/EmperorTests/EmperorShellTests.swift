import Foundation
import Testing
@testable import Emperor

@Suite struct EmperorShellTests {
    static let file = EmperorCore.VassalFile(name: "app.ini", path: "/srv/vassals/app.ini", monitor: "/srv/vassals", mtimeNs: 1)

    @Test func argvFollowsUWSGIsOrder() {
        var s = EmperorSettings()
        s.vassalsInheritBefore = ["/ib.ini"]
        s.vassalsIncludeBefore = ["/b.ini"]
        s.vassalsSet = ["inject-before=/shortcuts.ini", "logto=/var/log/%n.log"]
        s.vassalsInherit = ["/ia.ini"]
        s.vassalsInclude = ["/defaults.ini"]
        #expect(Emperor.arguments(for: Self.file, settings: s) == [
            "--inherit", "/ib.ini", "--include", "/b.ini",
            "--set", "inject-before=/shortcuts.ini", "--set", "logto=/var/log/app.log",
            "--ini", "app.ini", "--inherit", "/ia.ini", "--include", "/defaults.ini",
        ])
        var yaml = Self.file
        yaml.name = "x.yml"
        #expect(Emperor.arguments(for: yaml, settings: EmperorSettings()) == ["--yaml", "x.yml"])
    }

    @Test func magicVariables() {
        #expect(Emperor.expandMagic("%n|%s|%d|%p|%%|%J", file: Self.file) == "app|app.ini|/srv/vassals/|/srv/vassals/app.ini|%|%J")
    }

    @Test func environmentIsCleanedAndRewritten() {
        let env = Emperor.environment(base: ["PATH": "/bin", "UWSGI_RELOADS": "3", "NOTIFY_SOCKET": "/run/n", "UWSGI_EMPEROR_FD": "9",
                                             "UWSGI_VASSAL_HTTP_SOCKET": ":8080", "UWSGI_VASSAL_PROCESSES": "4"],
                                      extra: ["X": "1"], fd: 3)
        #expect(env == ["PATH": "/bin", "UWSGI_HTTP_SOCKET": ":8080", "UWSGI_PROCESSES": "4", "X": "1", "UWSGI_EMPEROR_FD": "3"])
    }

    @Test func statsKeysInUWSGIsOrder() throws {
        var core = EmperorCore(settings: { var s = EmperorSettings(); s.monitors = ["/srv/vassals"]; return s }())
        _ = core.scan([Self.file], now: .init(monoMs: 0, wallS: 100))
        _ = core.spawned(Self.file, pid: 42, now: .init(monoMs: 0, wallS: 100))
        let json = EmperorStats.json(core, process: .init(version: "v", pid: 1, uid: 0, gid: 0, cwd: "/"))
        let object = try #require(try JSONSerialization.jsonObject(with: Data(json.utf8)) as? [String: Any])
        #expect((object["vassals"] as? [[String: Any]])?.first?["pid"] as? Int == 42)
        let keys = ["\"version\"", "\"pid\"", "\"uid\"", "\"gid\"", "\"cwd\"", "\"emperor\"", "\"emperor_tyrant\"", "\"throttle_level\"", "\"vassals\"", "\"blacklist\""]
        let positions = keys.compactMap { json.range(of: $0)?.lowerBound }
        #expect(positions.count == keys.count)
        #expect(positions == positions.sorted())
    }

    @Test func readerChecksFiles() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("emperor-reader-\(getpid())").path
        let outside = dir + "-outside"
        try? FileManager.default.removeItem(atPath: dir)
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        try FileManager.default.createDirectory(atPath: outside, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir); try? FileManager.default.removeItem(atPath: outside) }
        try "[uwsgi]\nsocket = :0\n".write(toFile: dir + "/good.ini", atomically: true, encoding: .utf8)
        try "[uwsgi]\nthis line is wrong\n".write(toFile: dir + "/bad.ini", atomically: true, encoding: .utf8)
        try "[uwsgi]\ncluster-domain = other.example.org\n".write(toFile: dir + "/notmine.ini", atomically: true, encoding: .utf8)
        try "[uwsgi]\ndomain = www.mine.example.com\n[legion]\nbinary = /opt/uwsgi\n".write(toFile: dir + "/mine.ini", atomically: true, encoding: .utf8)
        try String(repeating: "; padding\n", count: 120_000).write(toFile: dir + "/huge.ini", atomically: true, encoding: .utf8)
        try "[uwsgi]\n".write(toFile: outside + "/evil.ini", atomically: true, encoding: .utf8)
        try FileManager.default.createSymbolicLink(atPath: dir + "/link.ini", withDestinationPath: outside + "/evil.ini")
        try "[uwsgi]\ncluster-domian = mine.example.com\n".write(toFile: dir + "/typo.ini", atomically: true, encoding: .utf8)
        try "x".write(toFile: dir + "/skip.skel", atomically: true, encoding: .utf8)
        try "x".write(toFile: dir + "/notes.txt", atomically: true, encoding: .utf8)
        var s = EmperorSettings()
        s.monitors = [dir]
        s.ownedDomains = ["mine.example.com", ".mine.example.com"]
        let files = Dictionary(uniqueKeysWithValues: VassalFileReader(settings: s, confineSymlinks: true).scan().map { ($0.name, $0) })
        #expect(Set(files.keys) == ["good.ini", "bad.ini", "notmine.ini", "mine.ini", "huge.ini", "link.ini", "typo.ini"])
        #expect(files["typo.ini"]?.problem?.contains("did you mean 'cluster-domain'") == true)
        #expect(files["good.ini"]?.problem == nil)
        #expect(files["mine.ini"]?.problem == nil)
        #expect(files["mine.ini"]?.binary == "/opt/uwsgi")
        #expect(files["bad.ini"]?.problem?.contains("line 2") == true)
        #expect(files["notmine.ini"]?.problem?.contains("not registered to this customer") == true)
        #expect(files["huge.ini"]?.problem?.contains("limit") == true)
        #expect(files["link.ini"]?.problem?.contains("outside") == true)
        #expect(VassalFileReader.owns("a.b.mine.example.com", [".mine.example.com"]))
        #expect(!VassalFileReader.owns("mine.example.com.evil.org", ["mine.example.com"]))
    }
}
