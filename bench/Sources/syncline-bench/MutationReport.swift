import Foundation

/// The three-way mutation table: (a) Syncline with group commit, (b) Syncline with batching off,
/// (c) pgbench running the transfer directly, and (c-batched) pgbench applying K transfers per
/// transaction. With several runs of a configuration (bench/run --repeat), each cell is the median
/// with the range in brackets.
struct MutationReport {
    var runs: [[String: Any]]

    static let variants: [(key: String, title: String)] = [
        ("a", "(a) Syncline, group commit"),
        ("b", "(b) Syncline, batching off"),
        ("c", "(c) pgbench, 1 transfer/tx"),
    ]

    private func num(_ o: [String: Any], _ k: String) -> Double? { (o[k] as? NSNumber)?.doubleValue }
    private func lat(_ o: [String: Any], _ k: String) -> Double? { ((o["latency_ms"] as? [String: Any])?[k] as? NSNumber)?.doubleValue }

    private func runs(_ variant: String, _ clients: Int?) -> [[String: Any]] {
        self.runs.filter { ($0["variant"] as? String) == variant && (clients == nil || num($0, "clients").map { Int($0) } == clients) }
    }

    private static func median(_ xs: [Double]) -> Double? {
        guard !xs.isEmpty else { return nil }
        let s = xs.sorted()
        return s.count % 2 == 1 ? s[s.count / 2] : (s[s.count / 2 - 1] + s[s.count / 2]) / 2
    }

    /// "median" or "median (min–max)".
    private static func cell(_ xs: [Double], digits: Int, big: Bool = false) -> String {
        guard let m = median(xs) else { return "–" }
        func f(_ v: Double) -> String { big ? grouped(v) : fmt(v, digits) }
        if xs.count == 1 { return f(m) }
        return "\(f(m)) (\(f(xs.min()!))–\(f(xs.max()!)))"
    }

    private func values(_ rs: [[String: Any]], _ k: String) -> [Double] { rs.compactMap { num($0, k) } }
    private func latencies(_ rs: [[String: Any]], _ k: String) -> [Double] { rs.compactMap { lat($0, k) } }

    private func rate(_ variant: String, _ clients: Int?) -> Double? { Self.median(values(runs(variant, clients), "mutations_per_s")) }

    /// Ratio of medians, and the range of per-repeat ratios when runs pair up by repeat.
    private func ratio(_ a: [[String: Any]], _ b: [[String: Any]]) -> String {
        guard let ma = Self.median(values(a, "mutations_per_s")), let mb = Self.median(values(b, "mutations_per_s")), mb > 0 else { return "–" }
        var perRepeat: [Double] = []
        for x in a {
            guard let r = x["repeat"] as? NSNumber ?? (x["name"] as? String).flatMap(Self.repeatOf) else { continue }
            if let y = b.first(where: { ($0["repeat"] as? NSNumber ?? ($0["name"] as? String).flatMap(Self.repeatOf)) == r }),
               let va = num(x, "mutations_per_s"), let vb = num(y, "mutations_per_s"), vb > 0 {
                perRepeat.append(va / vb)
            }
        }
        let m = fmt(ma / mb, 2) + "×"
        if perRepeat.count > 1 { return "\(m) (\(fmt(perRepeat.min()!, 2))–\(fmt(perRepeat.max()!, 2)))" }
        return m
    }

    /// bench/run names its files `mutations-r<k>-…`: the repeat number, for pairing ratios.
    private static func repeatOf(_ name: String) -> NSNumber? {
        guard let r = name.range(of: "-r"), name.hasPrefix("mutations") else { return nil }
        return Int(name[r.upperBound...].prefix(while: { $0.isNumber })).map { NSNumber(value: $0) }
    }

    func print() {
        let clientCounts = Set(self.runs.filter { ($0["variant"] as? String) != "c-batched" }.compactMap { num($0, "clients").map { Int($0) } }).sorted()
        let repeats = Set(self.runs.compactMap { ($0["name"] as? String).flatMap(Self.repeatOf)?.intValue }).count
        Swift.print("### Mutations: confirmed transfers per second and ack latency (2 cores shared by server, PostgreSQL and load client)")
        Swift.print("")
        if repeats > 1 { Swift.print("\(repeats) runs of each configuration: median (min–max).") }
        Swift.print("")
        var header = "| clients |"
        var rule = "|---:|"
        for (_, title) in Self.variants {
            header += " \(title): /s | p50 ms | p99 ms |"
            rule += "---:|---:|---:|"
        }
        header += " (a)/(b) | (a)/(c) |"
        rule += "---:|---:|"
        Swift.print(header)
        Swift.print(rule)
        for n in clientCounts {
            var line = "| \(n) |"
            for (key, _) in Self.variants {
                let rs = runs(key, n)
                line += " \(Self.cell(values(rs, "mutations_per_s"), digits: 0, big: true)) | \(Self.cell(latencies(rs, "p50"), digits: 2)) | \(Self.cell(latencies(rs, "p99"), digits: 2)) |"
            }
            line += " \(ratio(runs("a", n), runs("b", n))) | \(ratio(runs("a", n), runs("c", n))) |"
            Swift.print(line)
        }
        let batched = runs("c-batched", nil)
        if !batched.isEmpty {
            let k = batched.compactMap { num($0, "transfers_per_transaction") }.first.map { Int($0) } ?? 0
            let pc = batched.compactMap { num($0, "pgbench_clients") }.first.map { Int($0) } ?? 0
            Swift.print("")
            Swift.print("| (c-batched) pgbench, \(k) transfers per transaction (each in its own subtransaction), \(pc) clients | transfers/s | tx p50 ms | tx p99 ms | PostgreSQL CPU ms / 1k transfers |")
            Swift.print("|---|---:|---:|---:|---:|")
            Swift.print("| c-batched | \(Self.cell(values(batched, "mutations_per_s"), digits: 0, big: true)) | \(Self.cell(latencies(batched, "p50"), digits: 2)) | \(Self.cell(latencies(batched, "p99"), digits: 2)) | \(Self.cell(values(batched, "postgres_cpu_ms_per_1k"), digits: 0)) |")
        }
        Swift.print("")
        let top = clientCounts.max()
        if let top {
            let ab = ratio(runs("a", top), runs("b", top))
            Swift.print("- Goal (a) ≥ 5× (b) at \(top) clients: (a)/(b) = \(ab) → \(goal(rate("a", top), rate("b", top)) { $0 >= 5 })")
            if !batched.isEmpty {
                let ac = ratio(runs("a", top), batched)
                Swift.print("- Goal (a) within 20% of (c-batched): (a at \(top))/(c-batched) = \(ac) → \(goal(rate("a", top), rate("c-batched", nil)) { $0 >= 0.8 })")
            }
        }
        Swift.print("")
        Swift.print("Every run:")
        Swift.print("")
        Swift.print("| run | clients | /s | p50 ms | p99 ms | p99.9 ms | mean batch | batch ms | server CPU ms / 1k | PostgreSQL CPU ms / 1k | client CPU s | rejects | errors | complete |")
        Swift.print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
        for o in self.runs {
            let errors = (num(o, "errors") ?? 0) + (num(o, "other_error_frames") ?? 0) + (num(o, "failed_transactions") ?? 0) + (num(o, "failed_transfers_in_batches") ?? 0)
            let clientCPU = num(o, "client_cpu_s") ?? num(o, "pgbench_cpu_s")
            Swift.print("| \(o["name"] ?? "?") | \(num(o, "clients").map { String(Int($0)) } ?? "–") | \(num(o, "mutations_per_s").map(grouped) ?? "–") | \(lat(o, "p50").map { fmt($0) } ?? "–") | \(lat(o, "p99").map { fmt($0) } ?? "–") | \(lat(o, "p999").map { fmt($0) } ?? "–") | \(num(o, "mean_batch_size").map { fmt($0, 1) } ?? num(o, "transfers_per_transaction").map { fmt($0, 0) } ?? "–") | \(num(o, "mean_batch_ms").map { fmt($0) } ?? "–") | \(num(o, "server_cpu_ms_per_1k").map { fmt($0, 0) } ?? "–") | \(num(o, "postgres_cpu_ms_per_1k").map { fmt($0, 0) } ?? "–") | \(clientCPU.map { fmt($0) } ?? "–") | \(num(o, "rejects").map { String(Int($0)) } ?? "–") | \(String(Int(errors))) | \((o["complete"] as? Bool) == true ? "yes" : "NO") |")
        }
        Swift.print("")
    }

    private func goal(_ a: Double?, _ b: Double?, _ ok: (Double) -> Bool) -> String {
        guard let a, let b, b > 0 else { return "not measured" }
        return ok(a / b) ? "met" : "MISSED"
    }
}
