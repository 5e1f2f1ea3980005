//! Scanning gRPC length-prefixed message framing in HTTP bodies without buffering them.
//!
//! A gRPC body is a sequence of messages, each prefixed by 1 byte (compressed flag) and a 4-byte
//! big-endian length. Layers count messages and enforce size limits by reading those 5-byte
//! prefixes as data chunks pass by; payload bytes are skipped, never copied. Prefixes may be
//! split across chunks, so the scanner keeps a little state between chunks.

/// Incremental message-prefix scanner for one direction of one call.
#[derive(Debug, Default, Clone)]
pub struct FrameScanner {
    /// Bytes of the current prefix seen so far (0..5).
    prefix: [u8; 5],
    have: u8,
    /// Payload bytes of the current message still to skip.
    remaining: u64,
}

/// What one chunk contained.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ChunkScan {
    /// Messages whose prefix completed in this chunk.
    pub messages: u64,
    /// Largest declared message length among them (0 when none).
    pub largest: u64,
}

impl FrameScanner {
    /// Feeds one data chunk.
    pub fn scan(&mut self, mut chunk: &[u8]) -> ChunkScan {
        let mut result = ChunkScan::default();
        while !chunk.is_empty() {
            if self.remaining > 0 {
                let skip = self.remaining.min(chunk.len() as u64);
                self.remaining -= skip;
                // `skip` ≤ chunk.len(), so the cast cannot truncate.
                chunk = &chunk[skip as usize..];
                continue;
            }
            let need = 5 - self.have as usize;
            let take = need.min(chunk.len());
            self.prefix[self.have as usize..self.have as usize + take].copy_from_slice(&chunk[..take]);
            self.have += take as u8;
            chunk = &chunk[take..];
            if self.have == 5 {
                let len =
                    u32::from_be_bytes([self.prefix[1], self.prefix[2], self.prefix[3], self.prefix[4]]);
                result.messages += 1;
                result.largest = result.largest.max(u64::from(len));
                self.remaining = u64::from(len);
                self.have = 0;
            }
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(len: u32) -> Vec<u8> {
        let mut out = vec![0];
        out.extend_from_slice(&len.to_be_bytes());
        out.extend(std::iter::repeat_n(7u8, len as usize));
        out
    }

    #[test]
    fn messages_are_counted_across_arbitrary_chunk_boundaries() {
        let mut body = message(3);
        body.extend(message(0));
        body.extend(message(300));
        for split in 1..body.len() {
            let mut scanner = FrameScanner::default();
            let mut total = 0;
            let mut largest = 0;
            for chunk in body.chunks(split) {
                let scan = scanner.scan(chunk);
                total += scan.messages;
                largest = largest.max(scan.largest);
            }
            assert_eq!((total, largest), (3, 300), "chunk size {split}");
        }
    }

    #[test]
    fn a_declared_length_is_reported_before_the_payload_arrives() {
        let mut scanner = FrameScanner::default();
        let scan = scanner.scan(&[0, 0, 0x10, 0, 0]);
        assert_eq!(scan, ChunkScan { messages: 1, largest: 1 << 20 });
    }
}
