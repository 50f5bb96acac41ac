/// Reads the fuzzer's bytes as parameters and data; past the end every read is 0.
struct Input {
    let bytes: UnsafeBufferPointer<UInt8>
    var index = 0
    init(_ bytes: UnsafeBufferPointer<UInt8>) { self.bytes = bytes }

    var remaining: Int { bytes.count - index }

    mutating func next() -> UInt8? {
        guard index < bytes.count else { return nil }
        defer { index += 1 }
        return bytes[index]
    }
    mutating func byte() -> UInt8 { next() ?? 0 }
    /// Up to `count` bytes (fewer at the end).
    mutating func take(_ count: Int) -> [UInt8] {
        let n = min(count, remaining)
        defer { index += n }
        return Array(bytes[index..<index + n])
    }
    /// Everything left.
    mutating func rest() -> [UInt8] { take(remaining) }
}

/// Cuts `count` bytes into pieces whose sizes come from `sizes` (cycled; 0 stands for 1).
func pieces(_ count: Int, sizes: [UInt8]) -> [Range<Int>] {
    guard !sizes.isEmpty else { return [0..<count] }
    var ranges: [Range<Int>] = []
    var start = 0
    var i = 0
    while start < count {
        let size = max(1, Int(sizes[i % sizes.count]))
        ranges.append(start..<min(count, start + size))
        start += size
        i += 1
    }
    return ranges.isEmpty ? [0..<0] : ranges
}
