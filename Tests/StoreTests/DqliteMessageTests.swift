import NIOCore
import Testing
@testable import Store

@Suite struct DqliteMessageTests {
    @Test func headerAndPaddingFollowTheSpec() throws {
        let message = try DqliteMessage.request(.execSQL) { w throws(DqliteError) in
            w.u64(0)
            try w.text("SELECT 1")  // 8 bytes + NUL → padded to 16
            try w.parameters([.integer(7), .text("ab")])
        }
        let bytes = Array(message.readableBytesView)
        // body: u64 db (8) + text (16) + params header (1 count + 2 types → padded to 8) + int (8) + text "ab\0" padded (8) = 48
        #expect(bytes.count == 8 + 48)
        #expect(bytes[0..<4] == [6, 0, 0, 0])  // 48 / 8 words
        #expect(bytes[4] == 8)  // EXEC_SQL
        #expect(bytes[8 + 8 + 16] == 2)  // parameter count
        #expect(bytes[8 + 8 + 16 + 1] == 1 && bytes[8 + 8 + 16 + 2] == 3)  // int64, text
    }

    @Test func refusesBadInputWithAClearMessage() {
        let tooMany = [DqliteValue](repeating: .integer(1), count: 300)
        #expect(throws: DqliteError.self) {
            _ = try DqliteMessage.request(.execSQL) { w throws(DqliteError) in try w.parameters(tooMany) }
        }
        do {
            _ = try DqliteMessage.request(.execSQL) { w throws(DqliteError) in try w.parameters([.text("a\u{0}b")]) }
            Issue.record("NUL in text was accepted")
        } catch {
            #expect(error.description.contains("NUL"))
        }
        let huge = [UInt8](repeating: 1, count: DqliteMessage.maxValueBytes + 1)
        do {
            _ = try DqliteMessage.request(.execSQL) { w throws(DqliteError) in try w.parameters([.blob(huge)]) }
            Issue.record("oversized blob was accepted")
        } catch {
            #expect(error.description.contains("MiB"))
        }
    }

    /// A ROWS body built by hand as dqlite 1.11 lays it out: two columns, two rows (int+text, null+blob).
    @Test func decodesRowsAcrossParts() throws {
        func rowsFrame(last: Bool, rows: [[DqliteValue]]) -> DqliteMessage.Frame {
            var b = ByteBuffer()
            b.writeInteger(UInt64(2), endianness: .little)
            for name in ["a", "b"] {
                b.writeBytes(Array(name.utf8)); b.writeInteger(UInt8(0)); b.writeRepeatingByte(0, count: 6)
            }
            for row in rows {
                let codes = row.map { $0.typeCode }
                b.writeInteger(UInt8(codes[0] | (codes[1] << 4)))
                b.writeRepeatingByte(0, count: 7)
                for value in row {
                    switch value {
                    case .integer(let v): b.writeInteger(v, endianness: .little)
                    case .text(let s):
                        b.writeBytes(Array(s.utf8)); b.writeInteger(UInt8(0))
                        let used = s.utf8.count + 1
                        b.writeRepeatingByte(0, count: (8 - used % 8) % 8)
                    case .null: b.writeInteger(UInt64(0))
                    case .blob(let bytes):
                        b.writeInteger(UInt64(bytes.count), endianness: .little); b.writeBytes(bytes)
                        b.writeRepeatingByte(0, count: (8 - bytes.count % 8) % 8)
                    default: break
                    }
                }
            }
            b.writeInteger(last ? DqliteMessage.rowsDone : DqliteMessage.rowsPart, endianness: .little)
            return .init(type: 7, body: b)
        }
        let first = rowsFrame(last: false, rows: [[.integer(-5), .text("héllo wörld")]])
        let second = rowsFrame(last: true, rows: [[.null, .blob([0, 1, 255])]])
        #expect(DqliteMessage.rowsFrameHasMore(first))
        #expect(!DqliteMessage.rowsFrameHasMore(second))
        let rows = try DqliteMessage.decodeRows([first, second])
        #expect(rows.columns == ["a", "b"])
        #expect(rows.rows == [[.integer(-5), .text("héllo wörld")], [.null, .blob([0, 1, 255])]])
    }

    @Test func failureFramesBecomeErrors() throws {
        var b = ByteBuffer()
        b.writeInteger(UInt64(10250), endianness: .little)
        b.writeBytes(Array("not leader".utf8)); b.writeInteger(UInt8(0)); b.writeRepeatingByte(0, count: 5)
        var framed = ByteBuffer()
        framed.writeInteger(UInt32(b.readableBytes / 8), endianness: .little)
        framed.writeInteger(UInt8(0)); framed.writeInteger(UInt8(0)); framed.writeInteger(UInt16(0))
        framed.writeImmutableBuffer(b)
        // Truncated input: no frame yet.
        var partial = framed.getSlice(at: 0, length: 12) ?? ByteBuffer()
        #expect(try DqliteMessage.decodeFrame(&partial) == nil)
        let frame = try #require(try DqliteMessage.decodeFrame(&framed))
        do {
            _ = try DqliteMessage.expect(frame, .result)
            Issue.record("failure not raised")
        } catch {
            #expect(error.isNotLeader)
        }
    }

    @Test func oversizedResponseIsRejected() {
        var b = ByteBuffer()
        b.writeInteger(UInt32.max, endianness: .little)
        b.writeInteger(UInt32(7))
        #expect(throws: DqliteError.self) { _ = try DqliteMessage.decodeFrame(&b) }
    }
}
