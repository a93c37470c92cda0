/// A binary min-heap of timed events; ties break by insertion order, so runs are deterministic.
struct EventQueue<Payload> {
    private struct Item {
        var time: UInt64
        var order: UInt64
        var payload: Payload
        func before(_ other: Item) -> Bool { time < other.time || (time == other.time && order < other.order) }
    }

    private var heap: [Item] = []
    private var counter: UInt64 = 0

    var isEmpty: Bool { heap.isEmpty }
    var count: Int { heap.count }

    mutating func push(_ payload: Payload, at time: UInt64) {
        counter += 1
        heap.append(Item(time: time, order: counter, payload: payload))
        var child = heap.count - 1
        while child > 0 {
            let parent = (child - 1) / 2
            guard heap[child].before(heap[parent]) else { break }
            heap.swapAt(child, parent)
            child = parent
        }
    }

    mutating func pop() -> (time: UInt64, payload: Payload)? {
        guard !heap.isEmpty else { return nil }
        heap.swapAt(0, heap.count - 1)
        let item = heap.removeLast()
        var parent = 0
        while true {
            let left = 2 * parent + 1
            let right = left + 1
            var smallest = parent
            if left < heap.count, heap[left].before(heap[smallest]) { smallest = left }
            if right < heap.count, heap[right].before(heap[smallest]) { smallest = right }
            if smallest == parent { break }
            heap.swapAt(parent, smallest)
            parent = smallest
        }
        return (item.time, item.payload)
    }
}
