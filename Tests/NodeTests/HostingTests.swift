import Emperor
import Foundation
import Store
import Testing
@testable import Node

@Suite struct HostingTests {
    static let routes = HostingShortcuts.Routes(http: "127.0.0.1:2626", cluster: "127.0.0.1:2627")
    static func home(_ uid: Int64) -> String { "/c/\(uid)" }

    static func container(_ uid: Int64, ssh: String? = "ssh-ed25519 AAAA a@b", domains: [String] = ["a.example.com"], reboot: Int64 = 1) -> DesiredState.Container {
        DesiredState.Container(uid: uid, name: "web\(uid)", customer: "alice", memory: 256, storage: 2048, distro: nil, ip: "10.0.0.3",
                               lastRebootMs: reboot, sshKeys: ssh, rsaKey: "-----BEGIN PRIVATE KEY-----\nX\n-----END PRIVATE KEY-----",
                               rsaPubkey: "-----BEGIN PUBLIC KEY-----\nY\n-----END PUBLIC KEY-----", customerDomains: domains, customerUUID: "u")
    }

    /// What the disk holds after carrying out `plan` on `observed`.
    static func apply(_ plan: [HostingReconciler.Directive], to observed: [Int64: HostingReconciler.Observed]) -> [Int64: HostingReconciler.Observed] {
        var out = observed
        for d in plan {
            switch d {
            case .createHome(let uid, _): out[uid] = .init(files: [:])
            case .writeFile(let uid, let file): out[uid]?.files[file.path] = file.contents
            case .archiveHome(let uid): out[uid] = nil
            }
        }
        return out
    }

    @Test func newContainerGetsAHomeWithEveryFileAndPlanningAgainDoesNothing() {
        let desired = [Self.container(30001)]
        let plan = HostingReconciler.plan(desired: desired, observed: [:], home: Self.home, routes: Self.routes)
        #expect(plan.first == .createHome(uid: 30001, name: "web30001"))
        let written = Set(plan.compactMap { if case .writeFile(_, let f) = $0 { return f.path } else { return nil } })
        #expect(written == ["etc/hostname", "etc/domains", "etc/shortcuts.ini", ".ssh/uwsgi_authorized_keys", "etc/uwsgi.key", "etc/uwsgi.pubkey"])
        let key = plan.compactMap { if case .writeFile(_, let f) = $0, f.path == "etc/uwsgi.key" { return f } else { return nil } }.first
        #expect(key?.mode == 0o600 && key?.secret == true)
        let after = Self.apply(plan, to: [:])
        #expect(HostingReconciler.plan(desired: desired, observed: after, home: Self.home, routes: Self.routes).isEmpty)
    }

    @Test func sshKeysChangeRewritesOnlyThatFileAndNoReboot() {
        let before = Self.apply(HostingReconciler.plan(desired: [Self.container(30001)], observed: [:], home: Self.home, routes: Self.routes), to: [:])
        let changed = [Self.container(30001, ssh: "ssh-ed25519 BBBB c@d\nssh-rsa CCCC e@f")]
        let plan = HostingReconciler.plan(desired: changed, observed: before, home: Self.home, routes: Self.routes)
        #expect(plan == [.writeFile(uid: 30001, file: .init(path: ".ssh/uwsgi_authorized_keys", contents: "ssh-ed25519 BBBB c@d\nssh-rsa CCCC e@f\n", mode: 0o600, secret: false))])
        // The sub-Emperor's "mtime" is last_reboot: unchanged, so the Emperor does not reload it.
        #expect(HostingReconciler.vassals(desired: changed, home: Self.home, uidOwned: true)
            == HostingReconciler.vassals(desired: [Self.container(30001)], home: Self.home, uidOwned: true))
        #expect(HostingReconciler.vassals(desired: [Self.container(30001, reboot: 2)], home: Self.home, uidOwned: true).first?.mtimeNs == 2_000_000)
    }

    @Test func domainAddedRewritesTheOwnedList() {
        let before = Self.apply(HostingReconciler.plan(desired: [Self.container(30001)], observed: [:], home: Self.home, routes: Self.routes), to: [:])
        let plan = HostingReconciler.plan(desired: [Self.container(30001, domains: ["b.example.com", "a.example.com"])], observed: before,
                                          home: Self.home, routes: Self.routes)
        #expect(plan == [.writeFile(uid: 30001, file: .init(path: "etc/domains", contents: "a.example.com\nb.example.com\n", mode: 0o644, secret: false))])
    }

    @Test func removedContainerIsArchivedNotDeleted() {
        let before = Self.apply(HostingReconciler.plan(desired: [Self.container(30001), Self.container(30002)], observed: [:],
                                                       home: Self.home, routes: Self.routes), to: [:])
        let plan = HostingReconciler.plan(desired: [Self.container(30002)], observed: before, home: Self.home, routes: Self.routes)
        #expect(plan == [.archiveHome(uid: 30001)])
        #expect(HostingReconciler.vassals(desired: [Self.container(30002)], home: Self.home, uidOwned: false).map(\.name) == ["30002"])
    }

    @Test func shortcutsDeclareSignedSubscriptions() {
        let text = HostingShortcuts.render(home: "/c/30001", routes: Self.routes)
        #expect(text.hasPrefix("[uwsgi]\n"))
        #expect(text.contains("declare-option2 = domain=socket=/c/30001/run/$1_%J.socket;subscribe2=server=127.0.0.1:2626,key=$1,addr=/c/30001/run/$1_%J.socket,sign=SHA1:/c/30001/etc/uwsgi.key\n"))
        #expect(text.contains("declare-option2 = cluster-domain=socket=/c/30001/run/$1_%J.socket;subscribe2=server=127.0.0.1:2627,"))
        #expect(text.contains("ssl-ca-cluster-domain=") && text.contains("sni_ca=$4"))
        let noRouter = HostingShortcuts.render(home: "/c/1", routes: .init(http: nil, cluster: nil))
        #expect(!noRouter.contains("subscribe2"))
    }

    @Test func feedGivesEveryConsumerTheLatestState() async {
        let feed = DesiredStateFeed()
        var state = DesiredState.empty(server: "n1")
        state.version = 1
        feed.publish(state)
        var a = feed.subscribe().makeAsyncIterator()
        var b = feed.subscribe().makeAsyncIterator()
        #expect(await a.next()?.version == 1)
        #expect(await b.next()?.version == 1)
        state.version = 2
        feed.publish(state)
        state.version = 3
        feed.publish(state)
        #expect(await a.next()?.version == 3, "a slow consumer sees the newest state, not a backlog")
        #expect(await b.next()?.version == 3)
        feed.finish()
        #expect(await a.next() == nil)
    }

    @Test func emperorAndHostingSectionsParseAndNameTheirKeys() throws {
        let base = NodeConfigTests.valid
        let config = try NodeConfig.parse(base + "\n[emperor]\nvassals = [\"vassals\"]\nthrottle_ms = 500\nmax_throttle_ms = 4000\nrequired_heartbeat_s = 10\n[hosting]\ncontainers_dir = \"/srv/c\"\n",
                                          path: "/etc/legion/node.toml")
        #expect(config.emperor?.vassalDirectories == ["/etc/legion/vassals"])
        #expect(config.emperor?.settings.throttleMs == 500)
        #expect(config.emperor?.settings.requiredHeartbeatMs == 10_000)
        #expect(config.hosting?.containersDir == "/srv/c")
        #expect(config.hosting?.archiveDir == "/tmp/legion-test/n1/containers-archive")
        #expect(throws: NodeConfigError.invalid(key: "emperor.max_throttle_ms", problem: "100 is below throttle_ms 1000")) {
            try NodeConfig.parse(base + "\n[emperor]\nmax_throttle_ms = 100\n", path: "/x.toml")
        }
        do {
            _ = try NodeConfig.parse(base + "\n[hosting]\ncontainer_dir = \"/x\"\n", path: "/x.toml")
            Issue.record("an unknown key must be refused")
        } catch {
            #expect("\(error)".contains("hosting.container_dir"))
        }
    }
}

@Suite struct ContainerBundleTests {
    @Test func theBundleIsolatesAndLimitsTheContainer() throws {
        let c = HostingTests.container(30007)
        var withMemory = c
        withMemory.memory = 512
        let paths = ContainerBundle.Paths(rootfs: "/var/lib/legion/rootfs", bundle: "/var/lib/legion/bundles/30007", home: "/srv/c/30007",
                                          legion: "/usr/local/bin/legion", libraryDirectories: ["/opt/swift/usr/lib/swift/linux"],
                                          cgroupParent: "/legion/n1")
        let args = ContainerBundle.subEmperorArgs(legion: "/usr/local/bin/legion", home: "/srv/c/30007", uwsgi: "uwsgi", logMaxBytes: 1000, rescanS: 3)
        let config = ContainerBundle.config(for: withMemory, paths: paths, args: args)
        let data = try JSONSerialization.data(withJSONObject: config)
        let json = try #require(try JSONSerialization.jsonObject(with: data) as? [String: Any])
        let process = try #require(json["process"] as? [String: Any])
        let user = try #require(process["user"] as? [String: Any])
        #expect(user["uid"] as? Int == 30007 && user["gid"] as? Int == 30007)
        #expect(process["noNewPrivileges"] as? Bool == true)
        #expect((process["env"] as? [String])?.contains("UWSGI_EMPEROR_FD=3") == true)
        #expect((process["args"] as? [String])?.prefix(3) == ["/usr/local/bin/legion", "emperor", "/srv/c/30007/vassals"])
        #expect((json["root"] as? [String: Any])?["readonly"] as? Bool == true)
        #expect(json["hostname"] as? String == "web30007")
        let linux = try #require(json["linux"] as? [String: Any])
        #expect(linux["cgroupsPath"] as? String == "/legion/n1/30007")
        let namespaces = (linux["namespaces"] as? [[String: String]])?.compactMap { $0["type"] }
        #expect(namespaces == ["pid", "ipc", "uts", "mount"])
        let resources = try #require(linux["resources"] as? [String: Any])
        let memory = try #require(resources["memory"] as? [String: Any])
        #expect(memory["limit"] as? Int == 512 << 20 && memory["swap"] as? Int == 512 << 20, "no swap on top of the limit")
        let mounts = try #require(json["mounts"] as? [[String: Any]])
        func mount(_ destination: String) -> [String: Any]? { mounts.first { $0["destination"] as? String == destination } }
        #expect((mount("/usr")?["options"] as? [String])?.contains("ro") == true)
        #expect((mount("/etc")?["options"] as? [String])?.contains("ro") == true)
        #expect(mount("/containers/30007")?["source"] as? String == "/srv/c/30007")
        #expect(mount("/srv/c/30007")?["source"] as? String == "/srv/c/30007", "the home at its host path: socket paths agree")
        #expect(mount("/usr/local")?["source"] as? String == "/srv/c/30007")
        #expect((mount("/proc")?["options"] as? [String])?.contains("hidepid=2") == true)
        #expect(mount("/opt/swift/usr/lib/swift/linux") != nil && mount("/usr/local/bin/legion") != nil)
        let etc = ContainerBundle.etc(for: withMemory)
        #expect(etc["passwd"]?.contains("30007:x:30007:30007::/containers/30007:/bin/bash") == true)
        #expect(ContainerBundle.hostname("My App_1") == "my-app-1")
        #expect(linux["seccomp"] == nil, "no profile configured, none in the bundle")
        let withSeccomp = ContainerBundle.config(for: withMemory, paths: paths, args: args, seccomp: ["defaultAction": "SCMP_ACT_ERRNO"])
        #expect(((withSeccomp["linux"] as? [String: Any])?["seccomp"] as? [String: Any])?["defaultAction"] as? String == "SCMP_ACT_ERRNO")
    }
}

@Suite struct QuotaAlarmsTests {
    @Test func raisedAtTheThresholdAtMostOncePerAlarmFreqAndAgainAfterDroppingBelow() {
        var q = QuotaAlarms()
        let mb: Int64 = 1 << 20
        #expect(q.check(uid: 1, usedBytes: 89 * mb, totalBytes: 100 * mb, thresholdPercent: 90, freqS: 60, nowS: 0) == nil)
        let first = q.check(uid: 1, usedBytes: 91 * mb, totalBytes: 100 * mb, thresholdPercent: 90, freqS: 60, nowS: 10)
        #expect(first == "container 1: disk quota at 91% (91 of 100 MB used, threshold 90%)")
        #expect(q.check(uid: 1, usedBytes: 95 * mb, totalBytes: 100 * mb, thresholdPercent: 90, freqS: 60, nowS: 69) == nil)
        #expect(q.check(uid: 1, usedBytes: 95 * mb, totalBytes: 100 * mb, thresholdPercent: 90, freqS: 60, nowS: 70) != nil)
        // Below, then above again: at once.
        #expect(q.check(uid: 1, usedBytes: 10 * mb, totalBytes: 100 * mb, thresholdPercent: 90, freqS: 60, nowS: 71) == nil)
        #expect(q.check(uid: 1, usedBytes: 92 * mb, totalBytes: 100 * mb, thresholdPercent: 90, freqS: 60, nowS: 72) != nil)
        // A threshold of 0 disables it; alarm_freq below 60 counts as 60.
        #expect(q.check(uid: 2, usedBytes: 99 * mb, totalBytes: 100 * mb, thresholdPercent: 0, freqS: 60, nowS: 0) == nil)
        #expect(q.check(uid: 3, usedBytes: 99 * mb, totalBytes: 100 * mb, thresholdPercent: 50, freqS: 1, nowS: 0) != nil)
        #expect(q.check(uid: 3, usedBytes: 99 * mb, totalBytes: 100 * mb, thresholdPercent: 50, freqS: 1, nowS: 30) == nil)
    }

    @Test func withAUserNamespaceTheCustomerKeepsItsUidAndMountpointsAreMadeBeforehand() throws {
        let container = DesiredState.Container(uid: 30001, name: "web", customer: "c", memory: 128, storage: 256, distro: nil, ip: "10.0.0.3",
                                               lastRebootMs: 1, sshKeys: nil)
        var paths = ContainerBundle.Paths(rootfs: "/r", bundle: "/b", home: "/tmp/h/30001", legion: "/opt/legion/bin/legion",
                                          libraryDirectories: ["/opt/swift/lib"], cgroupParent: "/legion/n", subscribeDir: "/s",
                                          networkNamespace: "/run/netns/x")
        paths.userNamespace = true
        let config = ContainerBundle.config(for: container, paths: paths, args: ["x"])
        let linux = try #require(config["linux"] as? [String: Any])
        let maps = try #require(linux["uidMappings"] as? [[String: Int64]])
        #expect(maps.contains(["containerID": 30001, "hostID": 30001, "size": 1]))
        #expect(maps.contains(["containerID": 0, "hostID": 1_000_000, "size": 30001]))
        #expect((linux["namespaces"] as? [[String: String]])?.contains(["type": "user"]) == true)
        let mounts = try #require(config["mounts"] as? [[String: Any]])
        #expect(mounts.contains { ($0["destination"] as? String) == "/sys" && ($0["type"] as? String) == "bind" },
                "a netns made by the node: /sys is the host's, read-only")
        let points = ContainerBundle.mountpoints(of: config) { $0 == "/opt/legion/bin/legion" }
        let paths2 = points.map(\.path)
        #expect(paths2.contains("/r/opt/swift/lib") && paths2.contains("/r/usr"))
        #expect(points.contains { $0.path == "/r/opt/legion/bin/legion" && $0.file })
        #expect(!paths2.contains("/r/tmp/h/30001"), "under the home's /tmp bind: made inside it at start")
        #expect(!paths2.contains { $0.hasPrefix("/r/containers/") }, "under the /containers tmpfs")
    }
}
