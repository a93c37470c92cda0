import CProcess

/// Names threads the way top -H, ps -L and /proc show them (Foundation's `Thread.name` does not reach the kernel
/// on Linux: every thread would show its creator's name, usually a pool thread's).
public enum ThreadName {
    /// Names the calling thread; only the first 15 bytes are kept.
    public static func set(_ name: String) {
        _ = cproc_name_thread(name)
    }
}
