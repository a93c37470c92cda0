import Foundation
import Testing
import Legion
@testable import Node

@Suite struct NodeConfigTests {
    static let valid = """
    [node]
    name = "n1"
    data_dir = "/tmp/legion-test/n1"

    [legion]
    name = "l"
    bind = "127.0.0.1:17101"
    nodes = ["127.0.0.1:17102", "127.0.0.1:17103"]
    valor = 300
    secret = "aes-128-cbc:s3cret myiv"

    [legion.timing]
    heartbeat_ms = 40
    election_timeout_ms = 300
    preempt = false

    [legion.hooks]
    lord = "echo lord"
    node_left = ["echo a", "echo b"]

    [vip]
    driver = "loopback"
    address = "127.0.0.100"
    http_port = 18480

    [api]
    bind = "127.0.0.1:17201"
    """

    func parse(_ text: String) throws -> NodeConfig { try NodeConfig.parse(text, path: "/etc/legion/test.toml") }

    func expectError(_ text: String, mentioning fragments: [String], sourceLocation: SourceLocation = #_sourceLocation) {
        do {
            _ = try parse(text)
            Issue.record("expected a config error mentioning \(fragments)", sourceLocation: sourceLocation)
        } catch {
            let message = "\(error)"
            for fragment in fragments {
                #expect(message.contains(fragment), "'\(message)' should mention '\(fragment)'", sourceLocation: sourceLocation)
            }
        }
    }

    @Test func parsesAFullConfig() throws {
        let c = try parse(Self.valid)
        #expect(c.name == "n1")
        #expect(c.mode == .native)
        #expect(c.quorum == 2, "defaults to a majority of the 3 configured nodes")
        #expect(c.nodes.map(\.description) == ["127.0.0.1:17102", "127.0.0.1:17103"])
        #expect(c.secret.cipher == .aes128cbc && c.secret.ivToken == Array("myiv".utf8))
        #expect(c.nativeTiming.heartbeatMs == 40 && c.nativeTiming.electionTimeoutMs == 300 && !c.nativeTiming.preempt)
        #expect(c.hooks[.lord] == ["echo lord"])
        #expect(c.hooks[.nodeLeft] == ["echo a", "echo b"])
        #expect(c.vip.driver == .loopback && c.vip.endpoint == "127.0.0.100:18480")
        #expect(c.api?.port == 17201)
    }

    @Test func relativeDataDirIsResolvedAgainstTheConfigFile() throws {
        let c = try parse(Self.valid.replacingOccurrences(of: "\"/tmp/legion-test/n1\"", with: "\"../run/n1\""))
        #expect(c.dataDir == "/etc/run/n1")
    }

    @Test func unknownKeysAreErrorsThatNameTheKey() {
        expectError(Self.valid.replacingOccurrences(of: "valor = 300", with: "valor = 300\nvalour = 1"), mentioning: ["legion.valour", "unknown key", "valor"])
        expectError(Self.valid + "\n[extra]\nx = 1\n", mentioning: ["extra", "unknown key"])
        expectError(Self.valid.replacingOccurrences(of: "preempt = false", with: "preemt = false"), mentioning: ["legion.timing.preemt"])
        expectError(Self.valid.replacingOccurrences(of: "lord = \"echo lord\"", with: "lords = \"echo\""), mentioning: ["legion.hooks.lords"])
    }

    @Test func badValuesAreErrorsThatSayWhatToDo() {
        expectError(Self.valid.replacingOccurrences(of: "valor = 300", with: "valor = \"high\""), mentioning: ["legion.valor", "integer"])
        expectError(Self.valid.replacingOccurrences(of: "valor = 300", with: "valor = 70000"), mentioning: ["legion.valor", "0...65535"])
        expectError(Self.valid.replacingOccurrences(of: "aes-128-cbc:s3cret myiv", with: "bf-cbc:x"), mentioning: ["legion.secret", "bf-cbc"])
        expectError(Self.valid.replacingOccurrences(of: "127.0.0.1:17101", with: "127.0.0.1"), mentioning: ["legion.bind", "HOST:PORT"])
        expectError(Self.valid.replacingOccurrences(of: "valor = 300", with: "valor = 300\nquorum = 1"), mentioning: ["legion.quorum", "majority"])
        expectError(Self.valid.replacingOccurrences(of: "valor = 300", with: "valor = 300\nquorum = 9"), mentioning: ["legion.quorum", "more than"])
        expectError(Self.valid.replacingOccurrences(of: "mode", with: "x").replacingOccurrences(of: "name = \"l\"", with: "name = \"l\"\nmode = \"fast\""), mentioning: ["legion.mode", "native", "compat"])
        expectError(Self.valid.replacingOccurrences(of: "election_timeout_ms = 300", with: "election_timeout_ms = 60"), mentioning: ["election_timeout_ms"])
        expectError(Self.valid.replacingOccurrences(of: "\"127.0.0.100\"", with: "\"10.0.0.1\""), mentioning: ["vip.address", "127"])
        expectError(Self.valid.replacingOccurrences(of: "driver = \"loopback\"", with: "driver = \"iproute2\""), mentioning: ["vip.interface"])
        expectError(Self.valid.replacingOccurrences(of: "driver = \"loopback\"", with: "driver = \"magic\""), mentioning: ["vip.driver", "iproute2"])
        expectError(Self.valid.replacingOccurrences(of: "\"127.0.0.1:17102\", ", with: "\"127.0.0.1:17101\", "), mentioning: ["legion.nodes", "own bind"])
        expectError("[node\nname=", mentioning: ["TOML syntax error", "test.toml:1"])
        expectError("[legion]\nname=\"x\"", mentioning: ["node", "required"])
        let store = "\n[store]\nid = 1\nbind = \"127.0.0.1:17301\"\npoll_ms = 500\n"
        expectError(Self.valid + store + "idle_poll_ms = 200\n", mentioning: ["store.idle_poll_ms", "below poll_ms 500"])
    }

    @Test func theStoreSafetyPollsDefaultToHalfASecondAndFiveSeconds() throws {
        let c = try parse(Self.valid + "\n[store]\nid = 1\nbind = \"127.0.0.1:17301\"\n")
        #expect(c.store?.pollMs == 500 && c.store?.idlePollMs == 5000)
        let tuned = try parse(Self.valid + "\n[store]\nid = 1\nbind = \"127.0.0.1:17301\"\nidle_poll_ms = 8000\n")
        #expect(tuned.store?.idlePollMs == 8000)
    }

    @Test func compatModeAllowsUwsgiStyleQuorums() throws {
        let c = try parse(Self.valid.replacingOccurrences(of: "valor = 300", with: "valor = 300\nmode = \"compat\"\nquorum = 1"))
        #expect(c.mode == .compat && c.quorum == 1)
    }

    @Test func theShippedClusterConfigsAreValid() throws {
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        let dir = root.appendingPathComponent("cluster-configs")
        var checked = 0
        for sub in try FileManager.default.contentsOfDirectory(atPath: dir.path) {
            let folder = dir.appendingPathComponent(sub)
            guard let files = try? FileManager.default.contentsOfDirectory(atPath: folder.path) else { continue }
            for file in files where file.hasSuffix(".toml") {
                _ = try NodeConfig.load(path: folder.appendingPathComponent(file).path)
                checked += 1
            }
        }
        #expect(checked >= 3)
    }

    @Test func jsonEscapesControlCharactersAndQuotes() {
        let v = JSONValue.object([("a\"b", .string("line\n\t\u{01}é")), ("n", .null), ("x", .array([.int(-1), .bool(true)]))])
        #expect(v.serialized == #"{"a\"b":"line\n\t\u0001é","n":null,"x":[-1,true]}"#)
    }
}
