#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

struct BenchError: Error, CustomStringConvertible, Sendable {
    var description: String
    init(_ description: String) { self.description = description }
}

/// Wall-clock time in microseconds since the Unix epoch: the same clock Postgres's
/// `clock_timestamp()` reads on this machine, so `now - created_at` is a one-machine latency.
@inline(__always)
func wallMicros() -> Int64 {
    var ts = timespec()
    clock_gettime(CLOCK_REALTIME, &ts)
    return Int64(ts.tv_sec) * 1_000_000 + Int64(ts.tv_nsec) / 1_000
}

/// Monotonic seconds, for durations.
@inline(__always)
func monotonicSeconds() -> Double {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
}

enum ProcFS {
    static func readFile(_ path: String) -> String? {
        guard let f = fopen(path, "r") else { return nil }
        defer { fclose(f) }
        var out = [UInt8]()
        var buf = [UInt8](repeating: 0, count: 4096)
        while true {
            let n = buf.withUnsafeMutableBytes { fread($0.baseAddress, 1, 4096, f) }
            if n <= 0 { break }
            out.append(contentsOf: buf[0..<n])
        }
        return String(decoding: out, as: UTF8.self)
    }

    /// utime + stime of a process, in seconds (from /proc/<pid>/stat).
    static func cpuSeconds(pid: Int32) -> Double? {
        guard let stat = readFile("/proc/\(pid)/stat"),
              let close = stat.lastIndex(of: ")") else { return nil }
        // Fields after the command: state(3) ppid(4) ... utime(14) stime(15).
        let fields = stat[stat.index(after: close)...].split(separator: " ")
        guard fields.count > 12, let u = Double(fields[11]), let s = Double(fields[12]) else { return nil }
        let ticks = Double(sysconf(Int32(_SC_CLK_TCK)))
        return (u + s) / (ticks > 0 ? ticks : 100)
    }

    /// utime + stime of `root` and its direct children (the postmaster and its backends), in
    /// seconds. Children that exited are not counted.
    static func treeCPUSeconds(root: Int32) -> Double? {
        guard let own = cpuSeconds(pid: root) else { return nil }
        var total = own
        guard let dir = opendir("/proc") else { return total }
        defer { closedir(dir) }
        let ticks = Double(sysconf(Int32(_SC_CLK_TCK)))
        while let entry = readdir(dir) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in
                String(decoding: raw.prefix(while: { $0 != 0 }), as: UTF8.self)
            }
            guard let pid = Int32(name), pid != root, let stat = readFile("/proc/\(pid)/stat"),
                  let close = stat.lastIndex(of: ")") else { continue }
            let fields = stat[stat.index(after: close)...].split(separator: " ")
            // state(3) ppid(4) … utime(14) stime(15)
            guard fields.count > 12, Int32(fields[1]) == root, let u = Double(fields[11]), let s = Double(fields[12]) else { continue }
            total += (u + s) / (ticks > 0 ? ticks : 100)
        }
        return total
    }

    /// VmRSS of a process in KiB (from /proc/<pid>/status).
    static func rssKiB(pid: Int32) -> Int? {
        guard let status = readFile("/proc/\(pid)/status") else { return nil }
        for line in status.split(separator: "\n") where line.hasPrefix("VmRSS:") {
            let parts = line.split(separator: " ", omittingEmptySubsequences: true)
            for part in parts.dropFirst() {
                if let v = Int(part.trimmingCharacters(in: "\t")) { return v }
            }
        }
        return nil
    }

    static func cpuModel() -> String {
        guard let info = readFile("/proc/cpuinfo") else { return "unknown" }
        for line in info.split(separator: "\n") where line.hasPrefix("model name") {
            if let colon = line.firstIndex(of: ":") {
                return String(line[line.index(after: colon)...]).trimmingCharacters(in: " \t")
            }
        }
        return "unknown"
    }
}

extension StringProtocol {
    func trimmingCharacters(in set: String) -> String {
        let chars = Set(set)
        var s = Substring(self)
        while let f = s.first, chars.contains(f) { s = s.dropFirst() }
        while let l = s.last, chars.contains(l) { s = s.dropLast() }
        return String(s)
    }
}

/// Makes sure the process may open `needed` files, raising the soft limit up to the hard one.
func ensureFileLimit(_ needed: Int) throws {
    var rl = rlimit()
    #if os(Linux)
    let resource = Int32(RLIMIT_NOFILE.rawValue)
    #else
    let resource = RLIMIT_NOFILE
    #endif
    guard getrlimit(resource, &rl) == 0 else { return }
    if rl.rlim_cur >= rlim_t(needed) { return }
    let target = min(rlim_t(needed), rl.rlim_max)
    rl.rlim_cur = target
    _ = setrlimit(resource, &rl)
    if target < rlim_t(needed) {
        throw BenchError(
            "needs \(needed) open files but the limit is \(rl.rlim_max) (ulimit -n); lower the connection count")
    }
}

func base64url(_ s: String) -> String {
    let table = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_".utf8)
    let bytes = Array(s.utf8)
    var out = [UInt8]()
    var i = 0
    while i + 3 <= bytes.count {
        let v = UInt32(bytes[i]) << 16 | UInt32(bytes[i + 1]) << 8 | UInt32(bytes[i + 2])
        out += [table[Int(v >> 18 & 63)], table[Int(v >> 12 & 63)], table[Int(v >> 6 & 63)], table[Int(v & 63)]]
        i += 3
    }
    let rest = bytes.count - i
    if rest == 1 {
        let v = UInt32(bytes[i]) << 16
        out += [table[Int(v >> 18 & 63)], table[Int(v >> 12 & 63)]]
    } else if rest == 2 {
        let v = UInt32(bytes[i]) << 16 | UInt32(bytes[i + 1]) << 8
        out += [table[Int(v >> 18 & 63)], table[Int(v >> 12 & 63)], table[Int(v >> 6 & 63)]]
    }
    return String(decoding: out, as: UTF8.self)
}

/// The unsigned development token the server accepts with `--insecure-dev-auth`.
func devToken(sub: String) -> String {
    base64url(#"{"alg":"none","typ":"JWT"}"#) + "." + base64url(#"{"sub":"\#(sub)"}"#) + "."
}

/// Monotonic nanoseconds, for latencies.
@inline(__always)
func monotonicNanos() -> UInt64 {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
}
