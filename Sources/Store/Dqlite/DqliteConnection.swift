import NIOCore
import NIOPosix
import Synchronization

/// One TCP connection to a dqlite node, speaking wire protocol v1. One request is in flight at a time (the
/// server reads the next request only after answering the previous one); every call has a timeout, after which
/// the connection is closed (a late answer could otherwise be mistaken for the next one's).
public final class DqliteConnection: Sendable {
    public let address: String
    let channel: Channel
    private let handler: NIOLoopBound<DqliteResponseHandler>
    /// The database id returned by OPEN (nil until `open`).
    private let database = Mutex<UInt32?>(nil)

    private init(address: String, channel: Channel, handler: NIOLoopBound<DqliteResponseHandler>) {
        self.address = address
        self.channel = channel
        self.handler = handler
    }

    /// Connects, sets TCP_NODELAY and sends the protocol-version handshake.
    public static func connect(to address: String, group: EventLoopGroup, timeout: TimeAmount = .milliseconds(500)) async throws -> DqliteConnection {
        let (host, port) = try parse(address: address)
        do {
            let channel = try await ClientBootstrap(group: group)
                .connectTimeout(timeout)
                .channelOption(ChannelOptions.tcpOption(.tcp_nodelay), value: 1)
                .channelInitializer { channel in
                    channel.eventLoop.makeCompletedFuture {
                        try channel.pipeline.syncOperations.addHandler(ByteToMessageHandler(DqliteFrameDecoder()))
                        try channel.pipeline.syncOperations.addHandler(DqliteResponseHandler(address: address))
                    }
                }
                .connect(host: host, port: port).get()
            let handler = try await channel.eventLoop.submit {
                NIOLoopBound(try channel.pipeline.syncOperations.handler(type: DqliteResponseHandler.self), eventLoop: channel.eventLoop)
            }.get()
            let connection = DqliteConnection(address: address, channel: channel, handler: handler)
            var hello = channel.allocator.buffer(capacity: 8)
            hello.writeInteger(DqliteMessage.protocolVersion, endianness: .little)
            try await channel.writeAndFlush(hello)
            return connection
        } catch let error as DqliteError {
            throw error
        } catch {
            throw DqliteError.connection(address: address, reason: "\(error)")
        }
    }

    static func parse(address: String) throws(DqliteError) -> (String, Int) {
        guard let colon = address.lastIndex(of: ":"), let port = Int(address[address.index(after: colon)...]), (1...65535).contains(port) else {
            throw .invalidInput("address \(address) is not IPv4:port (dqlite 1.11 accepts IPv4 literals only)")
        }
        return (String(address[..<colon]), port)
    }

    public var isActive: Bool { channel.isActive }

    public func close() {
        channel.close(promise: nil)
    }

    /// Sends one request and returns its response frames (several for a multi-part ROWS answer).
    func roundTrip(_ message: ByteBuffer, operation: String, timeout: TimeAmount) async throws -> [DqliteMessage.Frame] {
        let loop = channel.eventLoop
        let handler = self.handler
        let channel = self.channel
        let address = self.address
        let future: EventLoopFuture<[DqliteMessage.Frame]> = loop.flatSubmit {
            let promise = loop.makePromise(of: [DqliteMessage.Frame].self)
            let h = handler.value
            guard channel.isActive else {
                promise.fail(DqliteError.connection(address: address, reason: "connection closed"))
                return promise.futureResult
            }
            guard h.pending == nil else {
                promise.fail(DqliteError.invalidInput("a request is already in flight on this connection; use one connection per task"))
                return promise.futureResult
            }
            h.pending = DqliteResponseHandler.Pending(promise: promise, frames: [])
            let timer = loop.scheduleTask(in: timeout) {
                if let pending = handler.value.pending, pending.promise.futureResult === promise.futureResult {
                    handler.value.pending = nil
                    promise.fail(DqliteError.timeout(operation: operation, milliseconds: Int(timeout.nanoseconds / 1_000_000)))
                    channel.close(promise: nil)
                }
            }
            promise.futureResult.whenComplete { _ in timer.cancel() }
            channel.writeAndFlush(message, promise: nil)
            return promise.futureResult
        }
        return try await future.get()
    }

    // MARK: - Requests

    public static let defaultTimeout: TimeAmount = .seconds(2)

    /// LEADER: the leader as this node knows it (nil when unknown).
    public func leader(timeout: TimeAmount = defaultTimeout) async throws -> (id: UInt64, address: String)? {
        let message = try DqliteMessage.request(.leader) { $0.u64(0) }
        let frames = try await roundTrip(message, operation: "LEADER", timeout: timeout)
        var reader = try DqliteMessage.expect(try single(frames), .server)
        let id = try reader.u64()
        let address = try reader.text()
        return id == 0 || address.isEmpty ? nil : (id, address)
    }

    /// CLIENT: registers the client (answers WELCOME).
    public func hello(clientID: UInt64, timeout: TimeAmount = defaultTimeout) async throws {
        let message = try DqliteMessage.request(.client) { $0.u64(clientID) }
        _ = try DqliteMessage.expect(try single(try await roundTrip(message, operation: "CLIENT", timeout: timeout)), .welcome)
    }

    /// OPEN: opens the named database on this connection (one per connection).
    public func open(_ name: String, timeout: TimeAmount = defaultTimeout) async throws {
        let message = try DqliteMessage.request(.open) { w throws(DqliteError) in
            try w.text(name)
            w.u64(0)
            try w.text("")
        }
        var reader = try DqliteMessage.expect(try single(try await roundTrip(message, operation: "OPEN", timeout: timeout)), .db)
        let id = try reader.u32()
        database.withLock { $0 = id }
    }

    private func db() throws(DqliteError) -> UInt32 {
        guard let id = database.withLock({ $0 }) else { throw .invalidInput("no database open on this connection; call open first") }
        return id
    }

    /// EXEC_SQL: runs one or more statements (parameters bind to a single statement).
    @discardableResult
    public func exec(_ sql: String, _ parameters: [DqliteValue] = [], timeout: TimeAmount = defaultTimeout) async throws -> DqliteResult {
        let db = try db()
        let message = try DqliteMessage.request(.execSQL) { w throws(DqliteError) in
            w.u64(UInt64(db))
            try w.text(sql)
            try w.parameters(parameters)
        }
        var reader = try DqliteMessage.expect(try single(try await roundTrip(message, operation: "EXEC_SQL", timeout: timeout)), .result)
        return DqliteResult(lastInsertID: Int64(bitPattern: try reader.u64()), rowsAffected: Int64(bitPattern: try reader.u64()))
    }

    /// QUERY_SQL: runs one query and collects every ROWS batch.
    public func query(_ sql: String, _ parameters: [DqliteValue] = [], timeout: TimeAmount = defaultTimeout) async throws -> DqliteRows {
        let db = try db()
        let message = try DqliteMessage.request(.querySQL) { w throws(DqliteError) in
            w.u64(UInt64(db))
            try w.text(sql)
            try w.parameters(parameters)
        }
        return try DqliteMessage.decodeRows(try await roundTrip(message, operation: "QUERY_SQL", timeout: timeout))
    }

    /// PREPARE: returns the statement id and its parameter count.
    public func prepare(_ sql: String, timeout: TimeAmount = defaultTimeout) async throws -> (statement: UInt32, parameters: Int) {
        let db = try db()
        let message = try DqliteMessage.request(.prepare) { w throws(DqliteError) in
            w.u64(UInt64(db))
            try w.text(sql)
        }
        var reader = try DqliteMessage.expect(try single(try await roundTrip(message, operation: "PREPARE", timeout: timeout)), .stmt)
        _ = try reader.u32()
        let statement = try reader.u32()
        let count = try reader.u64()
        return (statement, Int(count))
    }

    /// EXEC of a prepared statement.
    @discardableResult
    public func exec(statement: UInt32, _ parameters: [DqliteValue] = [], timeout: TimeAmount = defaultTimeout) async throws -> DqliteResult {
        let db = try db()
        let message = try DqliteMessage.request(.exec) { w throws(DqliteError) in
            w.u32(db)
            w.u32(statement)
            try w.parameters(parameters)
        }
        var reader = try DqliteMessage.expect(try single(try await roundTrip(message, operation: "EXEC", timeout: timeout)), .result)
        return DqliteResult(lastInsertID: Int64(bitPattern: try reader.u64()), rowsAffected: Int64(bitPattern: try reader.u64()))
    }

    /// QUERY of a prepared statement.
    public func query(statement: UInt32, _ parameters: [DqliteValue] = [], timeout: TimeAmount = defaultTimeout) async throws -> DqliteRows {
        let db = try db()
        let message = try DqliteMessage.request(.query) { w throws(DqliteError) in
            w.u32(db)
            w.u32(statement)
            try w.parameters(parameters)
        }
        return try DqliteMessage.decodeRows(try await roundTrip(message, operation: "QUERY", timeout: timeout))
    }

    /// FINALIZE a prepared statement.
    public func finalize(statement: UInt32, timeout: TimeAmount = defaultTimeout) async throws {
        let db = try db()
        let message = try DqliteMessage.request(.finalize) { w in
            w.u32(db)
            w.u32(statement)
        }
        _ = try DqliteMessage.expect(try single(try await roundTrip(message, operation: "FINALIZE", timeout: timeout)), .empty)
    }

    /// CLUSTER: every member with its role.
    public func cluster(timeout: TimeAmount = defaultTimeout) async throws -> [DqliteMember] {
        let message = try DqliteMessage.request(.cluster) { $0.u64(1) }
        var reader = try DqliteMessage.expect(try single(try await roundTrip(message, operation: "CLUSTER", timeout: timeout)), .servers)
        let count = try reader.u64()
        guard count <= 1024 else { throw DqliteError.protocolViolation("\(count) cluster members") }
        var members: [DqliteMember] = []
        for _ in 0..<count {
            let id = try reader.u64()
            let address = try reader.text()
            let role = try reader.u64()
            members.append(DqliteMember(id: id, address: address, role: DqliteMember.Role(rawValue: role) ?? .spare))
        }
        return members
    }

    /// ADD: adds a node as a spare (send to the leader).
    public func add(id: UInt64, address: String, timeout: TimeAmount = defaultTimeout) async throws {
        let message = try DqliteMessage.request(.add) { w throws(DqliteError) in
            w.u64(id)
            try w.text(address)
        }
        _ = try DqliteMessage.expect(try single(try await roundTrip(message, operation: "ADD", timeout: timeout)), .empty)
    }

    /// ASSIGN: changes a member's role (send to the leader; only promote nodes that run).
    public func assign(id: UInt64, role: DqliteMember.Role, timeout: TimeAmount = .seconds(5)) async throws {
        let message = try DqliteMessage.request(.assign) { w in
            w.u64(id)
            w.u64(role.rawValue)
        }
        _ = try DqliteMessage.expect(try single(try await roundTrip(message, operation: "ASSIGN", timeout: timeout)), .empty)
    }

    /// REMOVE: removes a member (send to the leader).
    public func remove(id: UInt64, timeout: TimeAmount = .seconds(5)) async throws {
        let message = try DqliteMessage.request(.remove) { $0.u64(id) }
        _ = try DqliteMessage.expect(try single(try await roundTrip(message, operation: "REMOVE", timeout: timeout)), .empty)
    }

    /// TRANSFER: hands leadership to another voter.
    public func transfer(to id: UInt64, timeout: TimeAmount = .seconds(5)) async throws {
        let message = try DqliteMessage.request(.transfer) { $0.u64(id) }
        _ = try DqliteMessage.expect(try single(try await roundTrip(message, operation: "TRANSFER", timeout: timeout)), .empty)
    }

    private func single(_ frames: [DqliteMessage.Frame]) throws(DqliteError) -> DqliteMessage.Frame {
        guard frames.count == 1, let frame = frames.first else { throw .protocolViolation("expected one response frame, got \(frames.count)") }
        return frame
    }
}

/// Splits the byte stream into response frames.
struct DqliteFrameDecoder: ByteToMessageDecoder {
    typealias InboundOut = DqliteMessage.Frame

    mutating func decode(context: ChannelHandlerContext, buffer: inout ByteBuffer) throws -> DecodingState {
        guard let frame = try DqliteMessage.decodeFrame(&buffer) else { return .needMoreData }
        context.fireChannelRead(Self.wrapInboundOut(frame))
        return .continue
    }
}

/// Completes the pending request with its frames; a multi-part ROWS answer completes on its last part.
final class DqliteResponseHandler: ChannelInboundHandler {
    typealias InboundIn = DqliteMessage.Frame

    struct Pending {
        var promise: EventLoopPromise<[DqliteMessage.Frame]>
        var frames: [DqliteMessage.Frame]
    }

    let address: String
    var pending: Pending?

    init(address: String) { self.address = address }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let frame = unwrapInboundIn(data)
        guard var current = pending else {
            // An answer nobody waits for (a request that timed out): the stream is no longer in step.
            context.close(promise: nil)
            return
        }
        current.frames.append(frame)
        if DqliteMessage.rowsFrameHasMore(frame) {
            pending = current
            return
        }
        pending = nil
        current.promise.succeed(current.frames)
    }

    func channelInactive(context: ChannelHandlerContext) {
        if let current = pending {
            pending = nil
            current.promise.fail(DqliteError.connection(address: address, reason: "the node closed the connection"))
        }
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        if let current = pending {
            pending = nil
            current.promise.fail(error as? DqliteError ?? DqliteError.connection(address: address, reason: "\(error)"))
        }
        context.close(promise: nil)
    }
}
