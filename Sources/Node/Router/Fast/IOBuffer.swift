/// A growable byte buffer for the fast path's sockets: bytes live between `readIndex` and
/// `writeIndex` of one allocation; reads and writes go straight into it (no per-call copies,
/// no copy-on-write checks). Owned by one connection or one event-loop thread.
final class IOBuffer {
    private(set) var base: UnsafeMutableRawPointer
    private(set) var capacity: Int
    private(set) var readIndex = 0
    private(set) var writeIndex = 0

    init(capacity: Int) {
        self.capacity = max(capacity, 64)
        base = UnsafeMutableRawPointer.allocate(byteCount: self.capacity, alignment: 16)
    }

    deinit { base.deallocate() }

    var count: Int { writeIndex - readIndex }
    var isEmpty: Bool { writeIndex == readIndex }
    var readable: UnsafeRawBufferPointer { UnsafeRawBufferPointer(start: base + readIndex, count: writeIndex - readIndex) }
    var writableCount: Int { capacity - writeIndex }
    var writePointer: UnsafeMutableRawPointer { base + writeIndex }

    func clear() {
        readIndex = 0
        writeIndex = 0
    }

    /// Makes room for `n` more bytes: moves the readable bytes to the front, then grows.
    func reserve(_ n: Int) {
        if capacity - writeIndex >= n { return }
        if readIndex > 0 {
            let live = writeIndex - readIndex
            if live > 0 { (base).copyMemory(from: base + readIndex, byteCount: live) }
            readIndex = 0
            writeIndex = live
            if capacity - writeIndex >= n { return }
        }
        var newCapacity = capacity * 2
        while newCapacity - writeIndex < n { newCapacity *= 2 }
        let grown = UnsafeMutableRawPointer.allocate(byteCount: newCapacity, alignment: 16)
        if writeIndex > 0 { grown.copyMemory(from: base, byteCount: writeIndex) }
        base.deallocate()
        base = grown
        capacity = newCapacity
    }

    /// Gives back memory after a large request or response (a keep-alive connection keeps a small buffer).
    func shrink(to target: Int) {
        guard capacity > target, count <= target else { return }
        let smaller = UnsafeMutableRawPointer.allocate(byteCount: target, alignment: 16)
        let live = count
        if live > 0 { smaller.copyMemory(from: base + readIndex, byteCount: live) }
        base.deallocate()
        base = smaller
        capacity = target
        readIndex = 0
        writeIndex = live
    }

    /// Marks `n` bytes written at `writePointer` (by `read(2)`).
    func commit(_ n: Int) { writeIndex += n }

    /// Drops `n` readable bytes.
    func consume(_ n: Int) {
        readIndex += n
        if readIndex >= writeIndex { readIndex = 0; writeIndex = 0 }
    }

    func append(_ bytes: UnsafeRawBufferPointer) {
        guard bytes.count > 0, let src = bytes.baseAddress else { return }
        reserve(bytes.count)
        (base + writeIndex).copyMemory(from: src, byteCount: bytes.count)
        writeIndex += bytes.count
    }

    func append(_ literal: StaticString) {
        append(UnsafeRawBufferPointer(start: literal.utf8Start, count: literal.utf8CodeUnitCount))
    }

    func append(_ bytes: [UInt8]) {
        bytes.withUnsafeBytes { append($0) }
    }

    func append(byte: UInt8) {
        reserve(1)
        base.storeBytes(of: byte, toByteOffset: writeIndex, as: UInt8.self)
        writeIndex += 1
    }

    /// Decimal digits of a non-negative number.
    func append(decimal value: Int) {
        var digits: (UInt64, UInt64, UInt64) = (0, 0, 0)
        var v = max(value, 0)
        let written = withUnsafeMutableBytes(of: &digits) { raw -> Int in
            var i = raw.count
            repeat {
                i -= 1
                raw[i] = UInt8(0x30 + v % 10)
                v /= 10
            } while v > 0
            append(UnsafeRawBufferPointer(rebasing: raw[i...]))
            return raw.count - i
        }
        _ = written
    }

    /// Lowercase hexadecimal (chunk sizes).
    func append(hex value: Int) {
        var digits: (UInt64, UInt64) = (0, 0)
        var v = max(value, 0)
        withUnsafeMutableBytes(of: &digits) { raw in
            var i = raw.count
            repeat {
                i -= 1
                let d = UInt8(v & 15)
                raw[i] = d < 10 ? 0x30 + d : 0x57 + d
                v >>= 4
            } while v > 0
            append(UnsafeRawBufferPointer(rebasing: raw[i...]))
        }
    }

    func patch(byte: UInt8, at: Int) {
        base.storeBytes(of: byte, toByteOffset: at, as: UInt8.self)
    }

    /// Overwrites two bytes at absolute offset `at` (little-endian), e.g. a uwsgi size field.
    func patchUInt16LE(_ value: Int, at: Int) {
        base.storeBytes(of: UInt8(truncatingIfNeeded: value), toByteOffset: at, as: UInt8.self)
        base.storeBytes(of: UInt8(truncatingIfNeeded: value >> 8), toByteOffset: at + 1, as: UInt8.self)
    }
}
