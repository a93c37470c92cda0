import Foundation
import Store
import Testing
@testable import Node

@Suite struct LoopboxPlannerTests {
    static let home = "/c/30001"
    static func box(_ id: Int64, _ file: String, _ mount: String, ro: Bool = false) -> DesiredState.Loopbox {
        .init(id: id, uid: 30001, filename: file, mountpoint: mount, readOnly: ro)
    }
    static func mounted(_ mount: String, backing: String?, bytes: Int64 = 16 << 20, deleted: Bool = false, ro: Bool = false) -> LoopboxPlanner.Mounted {
        .init(mountpoint: mount, device: 7, backingFile: backing, imageDeleted: deleted, deviceBytes: bytes, readOnly: ro)
    }

    @Test func wantedImagesMountParentsFirstAndMountedOnesStay() {
        let sizes: [String: Int64] = ["a.img": 16 << 20, "b.img": 16 << 20]
        let plan = LoopboxPlanner.plan(wanted: [Self.box(2, "b.img", "data/inner"), Self.box(1, "a.img", "data")], mounted: [],
                                       home: Self.home) { sizes[$0] }
        #expect(plan == [.mount(Self.box(1, "a.img", "data")), .mount(Self.box(2, "b.img", "data/inner"))])
        let again = LoopboxPlanner.plan(wanted: [Self.box(1, "a.img", "data")], mounted: [Self.mounted("data", backing: "/c/30001/a.img")],
                                        home: Self.home) { sizes[$0] }
        #expect(again.isEmpty)
    }

    @Test func removedDeletedResizedRetargetedOrFlippedLoopboxesAreUnmounted() {
        let sizes: [String: Int64] = ["a.img": 32 << 20, "c.img": 16 << 20]
        let plan = LoopboxPlanner.plan(
            wanted: [Self.box(1, "a.img", "grown"), Self.box(2, "gone.img", "deleted"), Self.box(3, "c.img", "other"), Self.box(4, "c.img", "flip", ro: true)],
            mounted: [Self.mounted("removed", backing: "/c/30001/x.img"), Self.mounted("grown", backing: "/c/30001/a.img"),
                      Self.mounted("deleted", backing: nil, deleted: true), Self.mounted("other", backing: "/c/30001/b.img"),
                      Self.mounted("flip", backing: "/c/30001/c.img")],
            home: Self.home) { sizes[$0] }
        let reasons = Dictionary(plan.compactMap { action -> (String, String)? in
            if case .unmount(let m, let r) = action { return (m, r) }
            return nil
        }, uniquingKeysWith: { a, _ in a })
        #expect(reasons["removed"]?.contains("removed") == true)
        #expect(reasons["grown"]?.contains("resized") == true)
        #expect(reasons["deleted"]?.contains("deleted") == true)
        #expect(reasons["other"]?.contains("another image") == true)
        #expect(reasons["flip"]?.contains("read-only") == true)
        // Remounted at once where the image is there (resized, retargeted, flipped); the deleted one waits.
        #expect(plan.contains(.mount(Self.box(1, "a.img", "grown"))) && plan.contains(.mount(Self.box(4, "c.img", "flip", ro: true))))
        #expect(plan.contains { if case .wait(let b, _) = $0 { return b.id == 2 } else { return false } })
    }

    @Test func smallOrMissingImagesWaitWithAReason() {
        let plan = LoopboxPlanner.plan(wanted: [Self.box(1, "tiny.img", "t"), Self.box(2, "none.img", "n")], mounted: [], home: Self.home) {
            $0 == "tiny.img" ? 4096 : nil
        }
        #expect(plan.count == 2)
        #expect(plan.allSatisfy { if case .wait = $0 { return true } else { return false } })
    }

    @Test func loopMountsUnderTheHomeAreReadFromMountinfo() {
        let info = """
            36 25 7:3 / /c/30001 rw,noatime shared:5 - ext4 /dev/loop3 rw
            40 36 7:9 / /c/30001/my\\040data rw,nosuid,nodev,noatime shared:9 - ext4 /dev/loop9 rw
            41 36 7:10 / /c/30001/ro ro,nosuid,nodev,noatime shared:10 - ext4 /dev/loop10 ro
            42 36 0:50 / /c/30001/tmpfs rw - tmpfs tmpfs rw
            43 25 7:11 / /c/300011/x rw - ext4 /dev/loop11 rw
            """
        let found = LoopboxPlanner.mountedUnder(home: "/c/30001", mountinfo: info)
        #expect(found.map(\.mountpoint) == ["my data", "ro"])
        #expect(found.map(\.device) == [9, 10])
        #expect(found.map(\.readOnly) == [false, true])
    }
}
