import NIOCore

/// Encoding of dqlite wire-protocol v1 requests and decoding of responses (pure; no I/O).
///
/// A message is one 8-byte header word (body size in words, u32 LE; type; schema; two unused bytes) followed
/// by a body padded to a multiple of 8 bytes. Values are little endian.
public enum DqliteMessage {
    public static let protocolVersion: UInt64 = 1
    public static let maxParameters = 255
    /// The largest single text or blob value this client sends (the control plane stores small records).
    public static let maxValueBytes = 16 << 20
    /// The largest response body this client accepts.
    public static let maxBodyBytes = 256 << 20

    public enum RequestType: UInt8, Sendable {
        case leader = 0, client = 1, open = 3, prepare = 4, exec = 5, query = 6, finalize = 7
        case execSQL = 8, querySQL = 9, interrupt = 10, add = 12, assign = 13, remove = 14
        case cluster = 16, transfer = 17, describe = 18
    }

    public enum ResponseType: UInt8, Sendable {
        case failure = 0, server = 1, welcome = 2, servers = 3, db = 4, stmt = 5, result = 6, rows = 7
        case empty = 8, files = 9, metadata = 10
    }

    static let rowsDone: UInt64 = 0xffff_ffff_ffff_ffff
    static let rowsPart: UInt64 = 0xeeee_eeee_eeee_eeee

    /// One response frame: its type and body.
    public struct Frame: Sendable {
        public var type: UInt8
        public var body: ByteBuffer
    }

    // MARK: - Requests

    /// A complete request message (header + body).
    public static func request(_ type: RequestType, allocator: ByteBufferAllocator = .init(),
                               _ body: (inout BodyWriter) throws(DqliteError) -> Void) throws(DqliteError) -> ByteBuffer {
        var writer = BodyWriter(buffer: allocator.buffer(capacity: 64))
        try body(&writer)
        writer.padToWord()
        let words = writer.buffer.readableBytes / 8
        var message = allocator.buffer(capacity: 8 + writer.buffer.readableBytes)
        message.writeInteger(UInt32(words), endianness: .little)
        message.writeInteger(type.rawValue)
        message.writeInteger(UInt8(0))
        message.writeInteger(UInt16(0))
        message.writeImmutableBuffer(writer.buffer)
        return message
    }

    public struct BodyWriter {
        var buffer: ByteBuffer

        public mutating func u64(_ v: UInt64) { buffer.writeInteger(v, endianness: .little) }
        public mutating func u32(_ v: UInt32) { buffer.writeInteger(v, endianness: .little) }

        public mutating func text(_ s: String) throws(DqliteError) {
            let bytes = Array(s.utf8)
            if bytes.contains(0) { throw .invalidInput("text contains a NUL byte; store such data as a blob") }
            if bytes.count > DqliteMessage.maxValueBytes {
                throw .invalidInput("text of \(bytes.count) bytes exceeds the \(DqliteMessage.maxValueBytes >> 20) MiB limit per value; keep bulky data out of the control-plane store")
            }
            buffer.writeBytes(bytes)
            buffer.writeInteger(UInt8(0))
            padToWord()
        }

        mutating func padToWord() {
            let rem = buffer.writerIndex % 8
            if rem != 0 { buffer.writeRepeatingByte(0, count: 8 - rem) }
        }

        /// A schema-0 parameter tuple: count byte, type bytes, padding, then the values.
        public mutating func parameters(_ values: [DqliteValue]) throws(DqliteError) {
            guard values.count <= DqliteMessage.maxParameters else {
                throw .invalidInput("\(values.count) parameters; dqlite 1.11 binds at most \(DqliteMessage.maxParameters) per statement — split the statement")
            }
            if values.isEmpty { return }
            let start = buffer.writerIndex
            buffer.writeInteger(UInt8(values.count))
            for value in values { buffer.writeInteger(value.typeCode) }
            let headerLength = buffer.writerIndex - start
            if headerLength % 8 != 0 { buffer.writeRepeatingByte(0, count: 8 - headerLength % 8) }
            for value in values {
                switch value {
                case .integer(let v): buffer.writeInteger(v, endianness: .little)
                case .float(let v): buffer.writeInteger(v.bitPattern, endianness: .little)
                case .text(let s): try text(s)
                case .blob(let bytes):
                    if bytes.count > DqliteMessage.maxValueBytes {
                        throw .invalidInput("blob of \(bytes.count) bytes exceeds the \(DqliteMessage.maxValueBytes >> 20) MiB limit per value; keep bulky data out of the control-plane store")
                    }
                    buffer.writeInteger(UInt64(bytes.count), endianness: .little)
                    buffer.writeBytes(bytes)
                    padToWord()
                case .null: buffer.writeInteger(UInt64(0))
                case .boolean(let v): buffer.writeInteger(UInt64(v ? 1 : 0), endianness: .little)
                }
            }
        }
    }

    // MARK: - Responses

    /// Splits one frame off the front of `buffer`, or returns nil when more bytes are needed.
    public static func decodeFrame(_ buffer: inout ByteBuffer) throws(DqliteError) -> Frame? {
        guard buffer.readableBytes >= 8,
              let words = buffer.getInteger(at: buffer.readerIndex, endianness: .little, as: UInt32.self),
              let type = buffer.getInteger(at: buffer.readerIndex + 4, as: UInt8.self)
        else { return nil }
        let bodyLength = Int(words) * 8
        guard bodyLength <= maxBodyBytes else {
            throw .protocolViolation("a response body of \(bodyLength) bytes is over the \(maxBodyBytes >> 20) MiB limit")
        }
        guard buffer.readableBytes >= 8 + bodyLength else { return nil }
        buffer.moveReaderIndex(forwardBy: 8)
        guard let body = buffer.readSlice(length: bodyLength) else { return nil }
        return Frame(type: type, body: body)
    }

    public struct BodyReader {
        var buffer: ByteBuffer

        public init(_ buffer: ByteBuffer) { self.buffer = buffer }

        public mutating func u64() throws(DqliteError) -> UInt64 {
            guard let v = buffer.readInteger(endianness: .little, as: UInt64.self) else { throw .protocolViolation("body ends inside a u64") }
            return v
        }

        public mutating func u32() throws(DqliteError) -> UInt32 {
            guard let v = buffer.readInteger(endianness: .little, as: UInt32.self) else { throw .protocolViolation("body ends inside a u32") }
            return v
        }

        public mutating func text() throws(DqliteError) -> String {
            guard let nul = buffer.readableBytesView.firstIndex(of: 0) else { throw .protocolViolation("text without a terminating NUL") }
            let length = nul - buffer.readerIndex
            guard let bytes = buffer.readBytes(length: length) else { throw .protocolViolation("text out of bounds") }
            let consumed = length + 1
            let padded = (consumed + 7) / 8 * 8
            guard buffer.readableBytes >= padded - length else { throw .protocolViolation("text padding out of bounds") }
            buffer.moveReaderIndex(forwardBy: padded - length)
            return String(decoding: bytes, as: UTF8.self)
        }

        public var remaining: Int { buffer.readableBytes }

        mutating func peekU64() -> UInt64? { buffer.getInteger(at: buffer.readerIndex, endianness: .little, as: UInt64.self) }
    }

    /// Throws the server's FAILURE, or a protocol error when the frame is not of the expected type.
    public static func expect(_ frame: Frame, _ type: ResponseType) throws(DqliteError) -> BodyReader {
        var reader = BodyReader(frame.body)
        if frame.type == ResponseType.failure.rawValue {
            let code = (try? reader.u64()) ?? 0
            let message = (try? reader.text()) ?? "(no message)"
            throw .failure(code: code, message: message)
        }
        guard frame.type == type.rawValue else {
            throw .protocolViolation("expected response type \(type.rawValue), got \(frame.type)")
        }
        return reader
    }

    /// Decodes the ROWS frames of one query (all but the last end with the "more" marker).
    public static func decodeRows(_ frames: [Frame]) throws(DqliteError) -> DqliteRows {
        var columns: [String] = []
        var rows: [[DqliteValue]] = []
        for (index, frame) in frames.enumerated() {
            var reader = try expect(frame, .rows)
            let count = try reader.u64()
            guard count <= 4096 else { throw .protocolViolation("\(count) columns") }
            var names: [String] = []
            for _ in 0..<count { names.append(try reader.text()) }
            if index == 0 { columns = names }
            while true {
                guard let marker = reader.peekU64() else { throw .protocolViolation("rows end without a marker") }
                if marker == rowsDone || marker == rowsPart {
                    _ = try reader.u64()
                    break
                }
                rows.append(try decodeRow(&reader, columns: names.count))
            }
        }
        return DqliteRows(columns: columns, rows: rows)
    }

    static func decodeRow(_ reader: inout BodyReader, columns: Int) throws(DqliteError) -> [DqliteValue] {
        let headerBytes = (columns + 1) / 2
        let paddedHeader = (headerBytes + 7) / 8 * 8
        guard let header = reader.buffer.readBytes(length: headerBytes), reader.buffer.readableBytes >= paddedHeader - headerBytes else {
            throw .protocolViolation("row header out of bounds")
        }
        reader.buffer.moveReaderIndex(forwardBy: paddedHeader - headerBytes)
        var row: [DqliteValue] = []
        row.reserveCapacity(columns)
        for column in 0..<columns {
            let byte = header[column / 2]
            let code = column % 2 == 0 ? byte & 0x0f : byte >> 4
            switch code {
            case 1: row.append(.integer(Int64(bitPattern: try reader.u64())))
            case 2: row.append(.float(Double(bitPattern: try reader.u64())))
            case 3, 10: row.append(.text(try reader.text()))
            case 4:
                let length = try reader.u64()
                guard length <= UInt64(reader.buffer.readableBytes), let bytes = reader.buffer.readBytes(length: Int(length)) else {
                    throw .protocolViolation("blob out of bounds")
                }
                let pad = (8 - Int(length) % 8) % 8
                reader.buffer.moveReaderIndex(forwardBy: min(pad, reader.buffer.readableBytes))
                row.append(.blob(bytes))
            case 5: _ = try reader.u64(); row.append(.null)
            case 9: row.append(.integer(Int64(bitPattern: try reader.u64())))
            case 11: row.append(.boolean(try reader.u64() != 0))
            default: throw .protocolViolation("unknown column type code \(code)")
            }
        }
        return row
    }

    /// True when a ROWS frame ends with the "more rows follow" marker.
    static func rowsFrameHasMore(_ frame: Frame) -> Bool {
        guard frame.type == ResponseType.rows.rawValue, frame.body.readableBytes >= 8,
              let last = frame.body.getInteger(at: frame.body.writerIndex - 8, endianness: .little, as: UInt64.self)
        else { return false }
        return last == rowsPart
    }
}
