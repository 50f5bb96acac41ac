import CZlib
import NIOCore

/// A raw-deflate (RFC 1951, no zlib header) compressor for permessage-deflate.
///
/// Memory (zlib 1.2.13, `deflateInit2`): about 5.9 KiB of state plus `2 << windowBits` (window)
/// + `2 << windowBits` (prev chain) + `2 << (memLevel + 7)` (hash heads) + `4 << (memLevel + 6)`
/// (pending/symbol buffer): 262 KiB at zlib's defaults (15, 8), 38 KiB at (12, 5).
final class ZlibDeflater {
    private let stream: UnsafeMutablePointer<z_stream>

    /// `windowBits` 8 is served as 9 with Huffman-only coding (zlib refuses raw 8; with no
    /// back-references at all the output is valid for any window the peer asked for).
    /// Level 1 (zlib's fast path): a real-time server spends CPU per message, and the echo's profile
    /// in Autobahn's compression sections was ~70% zlib at level 6; level 1 cut a 12.3 case from 19 s
    /// to 14 s (debug build, 2 cores), for a somewhat larger frame.
    init?(windowBits: Int, memoryLevel: Int, level: Int = 1) {
        stream = .allocate(capacity: 1)
        stream.initialize(to: z_stream())
        let bits = Int32(max(9, min(15, windowBits)))
        let strategy = windowBits <= 8 ? Z_HUFFMAN_ONLY : Z_DEFAULT_STRATEGY
        guard syncline_deflateInit2(stream, Int32(level), -bits, Int32(max(1, min(9, memoryLevel))), strategy) == Z_OK else {
            stream.deinitialize(count: 1)
            stream.deallocate()
            return nil
        }
    }

    deinit {
        deflateEnd(stream)
        stream.deinitialize(count: 1)
        stream.deallocate()
    }

    /// Forgets the history: the next message does not refer to earlier ones.
    func reset() {
        deflateReset(stream)
    }

    /// Compresses `parts` (one message's payload, in order) and appends the result to `output`:
    /// ends with a sync flush whose trailing `00 00 FF FF` is removed (RFC 7692 §7.2.1).
    func compress(_ parts: [ByteBuffer], into output: inout ByteBuffer) {
        let start = output.writerIndex
        for (index, part) in parts.enumerated() {
            let flush = index == parts.count - 1 ? Z_SYNC_FLUSH : Z_NO_FLUSH
            part.withUnsafeReadableBytes { input in
                stream.pointee.next_in = UnsafeMutablePointer(mutating: input.baseAddress?.assumingMemoryBound(to: UInt8.self))
                stream.pointee.avail_in = UInt32(input.count)
                repeat {
                    let bound = Int(deflateBound(stream, UInt(stream.pointee.avail_in))) + 16
                    output.writeWithUnsafeMutableBytes(minimumWritableBytes: bound) { out in
                        stream.pointee.next_out = out.baseAddress!.assumingMemoryBound(to: UInt8.self)
                        stream.pointee.avail_out = UInt32(out.count)
                        _ = deflate(stream, flush)
                        return out.count - Int(stream.pointee.avail_out)
                    }
                } while stream.pointee.avail_in > 0 || stream.pointee.avail_out == 0
                stream.pointee.next_in = nil
            }
        }
        if parts.isEmpty {
            compress([ByteBuffer()], into: &output)
            return
        }
        let tail = output.writerIndex - 4
        if tail >= start, output.getBytes(at: tail, length: 4) == [0, 0, 0xFF, 0xFF] {
            output.moveWriterIndex(to: tail)
        }
        if output.writerIndex == start {
            // An empty message right after a sync flush (context takeover): zlib makes no progress
            // and writes nothing, but an empty payload is not a compressed message (the 00 00 FF FF
            // the receiver appends lacks its block header and starts a stored block of 0xFF00
            // bytes that swallows the next message). RFC 7692 §7.2.3.6: send a single 0x00.
            output.writeInteger(UInt8(0))
        }
    }

    /// `parts` compressed as one independent message (fresh history), tail removed.
    func compressIndependently(_ parts: [ByteBuffer], allocator: ByteBufferAllocator = ByteBufferAllocator()) -> ByteBuffer {
        reset()
        var output = allocator.buffer(capacity: parts.reduce(0) { $0 + $1.readableBytes } / 2 + 64)
        compress(parts, into: &output)
        reset()
        return output
    }
}

/// A raw-deflate decompressor for one permessage-deflate message (the server negotiates
/// `client_no_context_takeover`, so none outlives its message).
final class ZlibInflater {
    enum Outcome: Equatable {
        case ok
        /// More than `limit` bytes would come out: a message too big, or a decompression bomb.
        case tooBig
        case invalid
    }

    private let stream: UnsafeMutablePointer<z_stream>
    private var ended = false

    init?() {
        stream = .allocate(capacity: 1)
        stream.initialize(to: z_stream())
        guard syncline_inflateInit2(stream, -15) == Z_OK else {
            stream.deinitialize(count: 1)
            stream.deallocate()
            return nil
        }
    }

    deinit {
        inflateEnd(stream)
        stream.deinitialize(count: 1)
        stream.deallocate()
    }

    /// Inflates `input`, appending to `output`, and stops as soon as `output` would hold more
    /// than `limit` readable bytes: at most 64 KiB is produced past what was already checked.
    func inflate(_ input: ByteBuffer, into output: inout ByteBuffer, limit: Int) -> Outcome {
        guard !ended else { return .ok }  // a final block ended the stream; the rest is padding
        return input.withUnsafeReadableBytes { raw -> Outcome in
            stream.pointee.next_in = UnsafeMutablePointer(mutating: raw.baseAddress?.assumingMemoryBound(to: UInt8.self))
            stream.pointee.avail_in = UInt32(raw.count)
            defer { stream.pointee.next_in = nil }
            while true {
                let room = limit + 1 - output.readableBytes
                guard room > 0 else { return .tooBig }
                let chunk = min(room, 1 << 16)
                var result: Int32 = Z_OK
                output.writeWithUnsafeMutableBytes(minimumWritableBytes: chunk) { out in
                    stream.pointee.next_out = out.baseAddress!.assumingMemoryBound(to: UInt8.self)
                    stream.pointee.avail_out = UInt32(chunk)
                    result = CZlib.inflate(stream, Z_SYNC_FLUSH)
                    return chunk - Int(stream.pointee.avail_out)
                }
                if output.readableBytes > limit { return .tooBig }
                switch result {
                case Z_OK:
                    if stream.pointee.avail_in == 0 && stream.pointee.avail_out > 0 { return .ok }
                case Z_BUF_ERROR:
                    return .ok  // no progress possible: all input consumed
                case Z_STREAM_END:
                    ended = true
                    return .ok
                default:
                    return .invalid
                }
            }
        }
    }
}
