import Foundation
import Logging
import Store
import Testing
@testable import Node

@Suite struct AlarmTests {
    static let stats = Data("""
        {"version":"2.0","vassals":[],"blacklist":[],"throttled":[
          {"id":"broken.ini","delay_ms":4000,"fast_deaths":4},{"id":"flaky.ini","delay_ms":1000,"fast_deaths":1}]}
        """.utf8)

    @Test func aVassalWithThreeFastDeathsRaisesOncePerAlarmFreqAndAgainAfterRecovering() {
        var alarms = CrashLoopAlarms()
        let throttled = CrashLoopAlarms.throttled(statsJSON: Self.stats)
        #expect(throttled.map(\.vassal) == ["broken.ini", "flaky.ini"])
        let first = alarms.check(uid: 30001, throttled: throttled, freqS: 60, nowS: 1000)
        #expect(first == ["container 30001: vassal broken.ini is crash-looping (4 fast deaths in a row, next start in 4 s); see logs/emperor.log"])
        #expect(alarms.check(uid: 30001, throttled: throttled, freqS: 60, nowS: 1059).isEmpty, "at most once per alarm_freq")
        #expect(alarms.check(uid: 30001, throttled: throttled, freqS: 60, nowS: 1060).count == 1)
        #expect(alarms.check(uid: 30002, throttled: throttled, freqS: 60, nowS: 1060).count == 1, "per container")
        // Recovered (no longer throttled), then crashing again: a new alarm at once.
        #expect(alarms.check(uid: 30001, throttled: [], freqS: 60, nowS: 1070).isEmpty)
        #expect(alarms.check(uid: 30001, throttled: throttled, freqS: 60, nowS: 1071).count == 1)
        #expect(CrashLoopAlarms.throttled(statsJSON: Data("not json".utf8)).isEmpty)
    }

    @Test func anAlarmIsOnDiskBeforeRaiseReturnsAndWaitsThereWhileTheStoreIsUnreachable() async throws {
        let dir = NSTemporaryDirectory() + "spool-\(UUID().uuidString)"
        defer { try? FileManager.default.removeItem(atPath: dir) }
        var options = StoreClient.Options(nodes: ["127.0.0.1:1"])   // nothing listens there
        options.budget = .milliseconds(300)
        options.noLeaderGrace = .milliseconds(100)
        let spool = AlarmSpool(dir: dir, options: options, logger: Logger(label: "test"))
        await spool.raise(uid: 30001, level: 0, message: "container 30001: OUT OF MEMORY !!!")
        await spool.raise(uid: 30001, level: 0, message: "second")
        #expect(spool.pending == 2)
        let names = try FileManager.default.contentsOfDirectory(atPath: dir).sorted()
        let record = try JSONDecoder().decode(AlarmSpool.Record.self, from: try #require(FileManager.default.contents(atPath: dir + "/" + names[0])))
        #expect(record.uid == 30001 && record.message == "container 30001: OUT OF MEMORY !!!" && record.requestID.hasPrefix("alarm-"))
        #expect(await spool.drain() == false, "the store is unreachable: nothing is dropped")
        #expect(spool.pending == 2)
        // A file that is not an alarm is moved aside, not retried forever and not deleted.
        FileManager.default.createFile(atPath: dir + "/0000000000000-junk.json", contents: Data("{".utf8))
        _ = await spool.drain()
        #expect(FileManager.default.fileExists(atPath: dir + "/unreadable-0000000000000-junk.json"))
        #expect(spool.pending == 2)
    }

    /// A node killed between a record's fsync and its rename (the test that kills a node right after an OOM did
    /// this) leaves it under its temporary name: the next start files it; a cut-short one is moved aside; the
    /// running process's own temporaries are not touched.
    @Test func aRecordLeftUnderItsTemporaryNameByAKilledNodeIsTakenInAtTheNextStart() throws {
        let dir = NSTemporaryDirectory() + "spool-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let spool = AlarmSpool(dir: dir, options: StoreClient.Options(nodes: ["127.0.0.1:1"]), logger: Logger(label: "test"))
        let record = AlarmSpool.Record(requestID: "alarm-1", uid: 30001, level: 0, message: "container 30001: OUT OF MEMORY !!!", atMs: 1_796_070_938_355)
        let complete = try JSONEncoder().encode(record)
        let final = "1796070938355-0000000000-alarm-1.json"
        #expect(FileManager.default.createFile(atPath: dir + "/.9f3a-" + final, contents: complete))
        #expect(FileManager.default.createFile(atPath: dir + "/.77b1-1796070938356-0000000001-alarm-2.json", contents: complete.prefix(20)))
        let own = AlarmSpool.temporaryPrefix + "1796070938357-0000000002-alarm-3.json"
        #expect(FileManager.default.createFile(atPath: dir + "/" + own, contents: complete))
        #expect(spool.pending == 0, "temporaries are not spooled records")
        spool.recoverTemporaries()
        #expect(spool.pending == 1)
        let taken = try JSONDecoder().decode(AlarmSpool.Record.self, from: try #require(FileManager.default.contents(atPath: dir + "/" + final)))
        #expect(taken == record, "filed under its final name, whole")
        #expect(FileManager.default.fileExists(atPath: dir + "/unreadable-77b1-1796070938356-0000000001-alarm-2.json"), "a cut-short one is kept aside")
        #expect(FileManager.default.fileExists(atPath: dir + "/" + own), "this process's own temporary is left to its writer")
        spool.recoverTemporaries()
        #expect(spool.pending == 1, "nothing more the second time")
    }

    @Test func aSpoolWaitingForTheStoreSaysSoAtOnceThenEveryThirtySecondsAndHowLongItWaited() {
        var report = AlarmSpool.WaitReport()
        let t0 = ContinuousClock.now
        let said = [0, 8, 30, 45].map { report.due(now: t0 + .seconds($0)) }
        #expect(said == [true, false, true, false], "the first failed round, not every retry, again after 30 s")
        let waited = report.reset(now: t0 + .seconds(47))
        #expect(waited == 47, "the wait counts from the first failure")
        let again = report.reset(now: t0 + .seconds(50))
        #expect(again == nil, "nothing to say when it was not waiting")
        let fresh = report.due(now: t0 + .seconds(51))
        #expect(fresh, "a new wait is said at once")
    }
}
