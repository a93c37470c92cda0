import Foundation
import Supervisor
import Testing

@Suite struct ProcessSupervisorTests {
    @Test func exitCodesSignalsAndOutput() async {
        let ok = await ProcessSupervisor.shared.run(.shell("echo hello; exit 3"), captureOutput: true)
        #expect(ok.reason == .exited(3))
        #expect(ok.output == "hello\n")
        let killed = await ProcessSupervisor.shared.run(.shell("kill -9 $$"))
        #expect(killed.reason == .signaled(9, coreDumped: false))
        #expect(killed.status == 137)
    }

    @Test func missingBinaryIsAClearError() {
        #expect(throws: SpawnError.self) { try ProcessSupervisor.shared.spawn(SpawnSpec(executable: "/nonexistent/uwsgi")) }
        do {
            _ = try ProcessSupervisor.shared.spawn(SpawnSpec(executable: "no-such-program-anywhere"))
        } catch {
            #expect(error.description.contains("is it installed and on PATH"))
        }
    }

    @Test func timeoutKillsTheWholeProcessGroup() async throws {
        let marker = "/tmp/legion-supervisor-\(getpid())"
        let started = ContinuousClock.now
        // The shell starts a grandchild that would outlive a kill of the shell alone.
        let result = await ProcessSupervisor.shared.run(.shell("sleep 30 & echo $! > \(marker); wait"), timeoutSeconds: 0.5)
        #expect(result.timedOut)
        #expect(result.status == -2)
        #expect(ContinuousClock.now - started < .seconds(5))
        let grandchild = try #require(Int32((try String(contentsOfFile: marker, encoding: .utf8)).trimmingCharacters(in: .whitespacesAndNewlines)))
        try? FileManager.default.removeItem(atPath: marker)
        try await Task.sleep(for: .milliseconds(300))
        // Gone, or a zombie waiting for init to reap it: either way no longer running.
        let state = (try? String(contentsOfFile: "/proc/\(grandchild)/stat", encoding: .utf8))?.split(separator: " ").dropFirst(2).first
        #expect(state == nil || state == "Z", "the grandchild died with its group (state \(state.map(String.init) ?? "gone"))")
    }

    @Test func passesDescriptorsAndSetsTheGroup() async throws {
        var fds: [Int32] = [0, 0]
        #expect(socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0, &fds) == 0)
        defer { close(fds[0]) }
        var spec = SpawnSpec.shell("printf x >&3; ps -o pgid= -p $$ | tr -d ' ' >&3")
        spec.passFDs = [(fds[1], 3)]
        let child = try ProcessSupervisor.shared.spawn(spec)
        close(fds[1])
        #expect(await child.wait() == .exited(0))
        var buffer = [UInt8](repeating: 0, count: 64)
        let n = read(fds[0], &buffer, 64)
        let text = String(decoding: buffer[0..<max(0, n)], as: UTF8.self)
        #expect(text == "x\(child.pid)\n", "fd 3 reached the child, which leads its own process group")
    }
}
