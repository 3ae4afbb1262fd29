//! Splitting streamed output (build output, container logs) into lines for a `LogSink`,
//! with bounded memory.

/// Longer lines are cut into pieces of this many bytes, so that output without newlines
/// cannot grow memory without bound.
pub(crate) const MAX_LINE_BYTES: usize = 16 * 1024;

/// Collects chunks of bytes and hands out complete lines.
#[derive(Default)]
pub(crate) struct LineBuf {
    buf: Vec<u8>,
}

impl LineBuf {
    /// Appends `bytes` and calls `emit` with every line completed by them, without its
    /// line ending, invalid UTF-8 replaced.
    pub(crate) fn push(&mut self, mut bytes: &[u8], mut emit: impl FnMut(&str)) {
        while !bytes.is_empty() {
            let room = MAX_LINE_BYTES - self.buf.len();
            let window = &bytes[..bytes.len().min(room)];
            if let Some(end) = window.iter().position(|&b| b == b'\n') {
                self.buf.extend_from_slice(&window[..end]);
                bytes = &bytes[end + 1..];
                emit(&self.take());
                continue;
            }
            self.buf.extend_from_slice(window);
            bytes = &bytes[window.len()..];
            if self.buf.len() >= MAX_LINE_BYTES {
                emit(&self.take());
            }
        }
    }

    /// Emits what is left, as a last line without a newline.
    pub(crate) fn finish(&mut self, mut emit: impl FnMut(&str)) {
        if !self.buf.is_empty() {
            emit(&self.take());
        }
    }

    fn take(&mut self) -> String {
        if self.buf.last() == Some(&b'\r') {
            self.buf.pop();
        }
        let line = String::from_utf8_lossy(&self.buf).into_owned();
        self.buf.clear();
        line
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(chunks: &[&[u8]]) -> Vec<String> {
        let mut buf = LineBuf::default();
        let mut out = Vec::new();
        for chunk in chunks {
            buf.push(chunk, |l| out.push(l.to_owned()));
        }
        buf.finish(|l| out.push(l.to_owned()));
        out
    }

    #[test]
    fn splits_lines_across_chunks() {
        assert_eq!(split(&[b"a\nb", b"c\r\n\n", b"last"]), ["a", "bc", "", "last"]);
        assert_eq!(split(&[]), Vec::<String>::new());
        assert_eq!(split(&[b"\xffbad\n"]), ["\u{fffd}bad"]);
        let long = vec![b'x'; MAX_LINE_BYTES * 2 + 3];
        let lens: Vec<usize> = split(&[&long[..10], &long[10..]]).iter().map(String::len).collect();
        assert_eq!(lens, [MAX_LINE_BYTES, MAX_LINE_BYTES, 3]);
    }
}
