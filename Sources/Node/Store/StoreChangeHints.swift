import Legion
import Synchronization
import UwsgiWire

/// The store's change-log position, passed around the legion so that an idle cluster does not poll the store.
///
/// A node that writes to the store (its API, alarm spool, reconcilers: `wroteHere()`, wired as the store clients'
/// `afterWrite`) reads the change log at once and announces the new sequence number to every member through the
/// legion's authenticated relay; the others fetch the desired state when told. Writers that do not announce (the
/// `legion store` CLI, a node that died between its write and its hint) are caught by the node whose dqlite member
/// leads the store, which reads the change log every `[store] poll_ms` and announces what it finds, and by every
/// node's own read every `[store] idle_poll_ms` (a lost datagram, a leadership change). Idle, nothing else asks
/// the store anything.
public final class StoreChangeHints: Sendable {
    /// The relay payload's marker: a uwsgi vars block whose first key is this.
    static let key = "store_seq"

    let origin: String
    private let outgoing: AsyncStream<[UInt8]>.Continuation
    /// Sealed and sent to every member by the Legion service.
    public let outbox: AsyncStream<[UInt8]>
    private let heard = Mutex<Int64>(-1)
    /// This node wrote to the store since its last read of the change log.
    private let wrote = Atomic<Bool>(false)
    private let signal = WakeSignal()

    public init(origin: String) {
        self.origin = origin
        (outbox, outgoing) = AsyncStream<[UInt8]>.makeStream(bufferingPolicy: .bufferingNewest(16))
    }

    /// This node saw the change log reach `seq`: tell every member.
    public func announce(seq: Int64) {
        precondition(seq >= 0, "change-log sequence numbers are not negative")
        var vars = UwsgiVars()
        vars.append(Self.key, number: UInt64(seq))
        vars.append("origin", origin)
        guard let payload = try? vars.encode() else { return }
        outgoing.yield(payload)
    }

    /// What a writer outside the legion (the CLI) sends after writing: "read the change log now".
    static func writeNotice(origin: String, atMs: UInt64 = SystemClock.wallMillis()) -> [UInt8]? {
        var vars = UwsgiVars()
        vars.append(Self.key, number: 0)
        vars.append("wrote", "1")
        vars.append("at_ms", number: atMs)
        vars.append("origin", origin)
        return try? vars.encode()
    }

    /// A notice older (or newer) than this on the receiver's clock is a replay, or a clock to fix: ignored.
    static let noticeWindowMs: UInt64 = 30_000

    /// Tells every node of a legion that the store was just written (the CLI's `afterWrite`): one authenticated
    /// datagram each, sealed with the legion's secret from `config`, sent to `members` (their `[legion] bind`).
    /// Without it they would see the write at the store leader's next `poll_ms` check. Returns how many were sent.
    @discardableResult
    public static func noticeWrite(config: NodeConfig, members: [NodeConfig.Endpoint], origin: String) -> Int {
        guard !members.isEmpty, let payload = writeNotice(origin: origin),
              let codec = try? LegionCodec(mode: config.mode, secret: config.secret, aead: OpenSSLAEAD.make),
              let datagram = try? codec.sealRelay(payload),
              let socket = try? LegionSocket(bind: NodeConfig.Endpoint(host: members[0].host.contains(":") ? "::" : "0.0.0.0", port: 0),
                                             peers: members)
        else { return 0 }
        defer { socket.close() }
        return socket.sendToPeers(datagram)
    }

    /// Whether a relay payload is a change hint (rather than a cluster-domain relay).
    static func isHint(_ payload: [UInt8]) -> Bool {
        // vars: u16le key length, key, u16le value length, value … — the first key says what it is.
        let key = Array(Self.key.utf8)
        guard payload.count >= 2 + key.count else { return false }
        let length = Int(payload[0]) | Int(payload[1]) << 8
        return length == key.count && Array(payload[2..<(2 + key.count)]) == key
    }

    /// A hint from a member (already authenticated by the Legion transport); malformed ones are ignored.
    /// Returns the sequence number it carried. A write notice (`wrote=1`, from a writer that does not know the new
    /// position: the `legion admin`/`legion store` CLI) makes this node read the change log now, like its own write.
    @discardableResult
    public func received(_ payload: [UInt8]) -> Int64? {
        guard let vars = try? UwsgiVars(decoding: payload), let number = vars.number(Self.key), vars.string("origin") != origin,
              number <= UInt64(Int64.max) else { return nil }
        let seq = Int64(number)
        if vars.string("wrote") == "1" {   // no position in it: not a position heard
            // A captured notice replayed later makes nobody read anything (and reads are paced anyway).
            guard let at = vars.number("at_ms") else { return nil }
            let now = SystemClock.wallMillis()
            guard (now >= at ? now - at : at - now) <= Self.noticeWindowMs else { return nil }
            wroteHere()
            return seq
        }
        let newer = heard.withLock { latest -> Bool in
            guard seq > latest else { return false }
            latest = seq
            return true
        }
        if newer { signal.notify() }
        return seq
    }

    /// The highest sequence number a member announced (-1: none yet).
    public var latestHeard: Int64 { heard.withLock { $0 } }

    /// This node changed the store: its change follower reads the change log now (and announces what it finds).
    public func wroteHere() {
        wrote.store(true, ordering: .releasing)
        signal.notify()
    }

    /// Whether this node wrote since the last call (clears the mark: a write after it marks again).
    func takeWrote() -> Bool {
        wrote.exchange(false, ordering: .acquiringAndReleasing)
    }

    /// Whether this node wrote since the last `takeWrote()`, without clearing the mark.
    var hasWritten: Bool { wrote.load(ordering: .acquiring) }

    /// Returns when a newer sequence number is heard, or after `timeout`.
    func wait(timeout: Duration) async {
        await signal.wait(timeout: timeout)
    }
}
