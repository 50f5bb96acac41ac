// The fan-out's cost per delivery, deterministic (bench/README.md, "Fan-out cost"):
//
//   objcopy --strip-debug .build/release/syncline-fanout-cost /tmp/fanout-cost   # valgrind 3.19 cannot read DWARF 5
//   SWIFT_DETERMINISTIC_HASHING=1 valgrind --tool=callgrind --collect-atstart=no \
//       '--toggle-collect=*17FanoutCostHarnessO4push*' /tmp/fanout-cost [subscribers] [feeds] [commits] [rows-per-commit]
//
// then instructions (Ir) ÷ the deliveries printed here.
import Foundation
import SynclineServer

var options = FanoutCostHarness.Options()
let args = CommandLine.arguments.dropFirst().map { Int($0) }
if args.contains(where: { $0 == nil || $0! <= 0 }) {
    FileHandle.standardError.write("usage: syncline-fanout-cost [subscribers] [feeds] [commits] [rows-per-commit] (positive integers)\n".data(using: .utf8)!)
    exit(64)
}
if args.count > 0 { options.subscribers = args[0]! }
if args.count > 1 { options.feeds = args[1]! }
if args.count > 2 { options.commits = args[2]! }
if args.count > 3 { options.rowsPerCommit = args[3]! }
let report = try FanoutCostHarness.run(options)
print("subscribers \(options.subscribers) feeds \(options.feeds) commits \(options.commits) rows/commit \(options.rowsPerCommit): "
    + "deliveries \(report.deliveries) frames \(report.frames) buffers \(report.buffers) bytes \(report.bytes)")
