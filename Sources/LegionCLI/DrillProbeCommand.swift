import ArgumentParser
import Foundation
import Supervisor
import Node
import Store
#if canImport(Glibc)
import Glibc
#endif

/// The client side of `legion drill`, run in the lab's client namespace: asks the VIP every 10 ms, writes an
/// idempotent row to the store every 50 ms (acknowledged ids to --acked-file), and every second lists the MAC
/// addresses that answer ARP for the VIP. One JSON line per observation in --out.
struct DrillProbeCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "drill-probe", abstract: "Client probe of `legion drill` (internal).",
                                                    shouldDisplay: false)

    @Option(help: "VIP address and port, e.g. 10.251.0.100:80.") var vip: String
    @Option(help: "Store member addresses, comma-separated.") var store: String
    @Option(help: "JSON-lines output file.") var out: String
    @Option(help: "Acknowledged write ids go here.") var ackedFile: String
    @Option(help: "Stop once this file exists.") var stopFile: String
    @Option(help: "Milliseconds between VIP requests.") var intervalMs = 10
    @Option(help: "Give up after this many seconds in any case.") var maxSeconds = 600
    @Option(help: "Ask GET / for this cluster domain through the VIP (answered by a vassal with its node's name) instead of /.legion/lord.")
    var domain: String?
    @Option(help: "A VIP request's time limit in milliseconds (a client's patience: 200 measures gaps, seconds model real clients).")
    var timeoutMs = 200

    final class Sink: @unchecked Sendable {
        // @unchecked: the handles are only written under `lock`.
        let lock = NSLock()
        let out: FileHandle
        let acked: FileHandle
        init(out: FileHandle, acked: FileHandle) {
            self.out = out
            self.acked = acked
        }
        func line(_ value: JSONValue) { lock.withLock { out.write(Data((value.serialized + "\n").utf8)) } }
        func ack(_ id: String) { lock.withLock { acked.write(Data((id + "\n").utf8)) } }
    }

    func run() async throws {
        let parts = vip.split(separator: ":")
        guard parts.count == 2, let port = Int(parts[1]) else { throw ValidationError("--vip must be IP:PORT") }
        let host = String(parts[0])
        for path in [out, ackedFile] where !FileManager.default.fileExists(atPath: path) {
            _ = FileManager.default.createFile(atPath: path, contents: nil)
        }
        guard let outHandle = FileHandle(forWritingAtPath: out), let ackHandle = FileHandle(forWritingAtPath: ackedFile) else {
            throw UserFacingError("cannot write \(out) or \(ackedFile)")
        }
        outHandle.seekToEndOfFile()
        ackHandle.seekToEndOfFile()
        let sink = Sink(out: outHandle, acked: ackHandle)
        let stopFile = self.stopFile
        let deadline = Date().addingTimeInterval(TimeInterval(maxSeconds))
        @Sendable func stopping() -> Bool { FileManager.default.fileExists(atPath: stopFile) || Date() > deadline }
        let interval = intervalMs
        let (domain, timeout) = (self.domain, timeoutMs)
        let addresses = store.split(separator: ",").map(String.init).filter { !$0.isEmpty }

        // VIP requests on their own thread (blocking sockets, fresh connection each time).
        let http = Thread {
            while !stopping() {
                let t = Int64(SystemClock.wallMillis())
                var by: String?
                var failure: String?
                switch HTTPProbe.fetch(host: host, port: port, path: domain == nil ? "/.legion/lord" : "/", timeoutMs: timeout, hostHeader: domain) {
                case .failure(let error):
                    failure = error.description
                case .success(let response) where response.status != 200:
                    failure = "status \(response.status): \(response.body.prefix(120))"
                case .success(let response):
                    if domain != nil {
                        by = response.body.trimmingCharacters(in: .whitespacesAndNewlines)
                    } else if let object = try? JSONSerialization.jsonObject(with: Data(response.body.utf8)) as? [String: Any] {
                        by = object["answered_by"] as? String
                    }
                    if by == nil { failure = "an answer without the serving node: \(response.body.prefix(120))" }
                }
                var fields: [(String, JSONValue)] = [("t", .int(t)), ("ok", .bool(by != nil)), ("by", by.map { .string($0) } ?? .null)]
                if let failure { fields.append(("error", .string(failure))) }
                sink.line(.object(fields))
                usleep(useconds_t(interval * 1000))
            }
        }
        http.start()
        // ARP: which MACs answer for the VIP (more than one = two holders).
        let arp = Thread {
            while !stopping() {
                let t = Int64(SystemClock.wallMillis())
                let result = ProcessSupervisor.shared.runBlocking(SpawnSpec(executable: "arping", arguments: ["-w", "1", "-I", "eth0", host]),
                                                                  timeoutSeconds: 5, captureOutput: true)
                guard result.error == nil else { return }
                var macs = Set<String>()
                for line in result.output.split(separator: "\n") where line.contains("reply from") {
                    if let open = line.firstIndex(of: "["), let close = line.firstIndex(of: "]"), open < close {
                        macs.insert(String(line[line.index(after: open)..<close]))
                    }
                }
                sink.line(.object([("t", .int(t)), ("arp_macs", .int(Int64(macs.count)))]))
            }
        }
        arp.start()
        // Idempotent writes: retried with the same id until acknowledged (none when the system has no store).
        while addresses.isEmpty, !stopping() { try? await Task.sleep(for: .milliseconds(50)) }
        var options = StoreClient.Options(nodes: addresses)
        options.budget = .seconds(3)
        let client = StoreClient(options: options)
        let run = String(UUID().uuidString.prefix(8))
        var created = false
        var seq = 0
        while !stopping() {
            if !created {
                created = (try? await client.exec("""
                    CREATE TABLE IF NOT EXISTS drill_writes (id INTEGER PRIMARY KEY, request_id TEXT NOT NULL, at_ms INTEGER NOT NULL)
                    """, retry: true)) != nil
                if !created { try? await Task.sleep(for: .milliseconds(200)); continue }
            }
            let id = "\(run)-\(seq)"
            do {
                _ = try await client.write(requestID: id, [
                    .init("INSERT INTO drill_writes(request_id, at_ms) VALUES(?, ?)", [.text(id), .integer(Int64(SystemClock.wallMillis()))]),
                ])
                sink.ack(id)
                seq += 1
            } catch {
                // Not acknowledged: the same id is retried (applied at most once).
            }
            try? await Task.sleep(for: .milliseconds(50))
        }
        await client.close()
        while http.isExecuting || arp.isExecuting { try? await Task.sleep(for: .milliseconds(20)) }
    }
}
