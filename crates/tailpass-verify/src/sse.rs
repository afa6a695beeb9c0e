//! The `text/event-stream` format (HTML Living Standard §9.2.5–9.2.6), read incrementally and
//! bounded: where its lines end, and the events they make.
//!
//! A line ends at CRLF, at LF, or at a CR alone, and a stream may be cut anywhere — between
//! the CR and the LF of one line end too, which must not read as an empty line (an empty line
//! ends an event). [`LineEnds`] keeps that one bit across chunks, so that every reader of a
//! stream (the revocation feed's follower here, the gateway's meters and filters) splits it
//! the same way.

/// The byte order mark a stream may begin with, which its reader ignores (§9.2.6).
pub const BOM: &[u8] = b"\xEF\xBB\xBF";

/// Where lines end in a stream that arrives in chunks.
#[derive(Debug, Default, Clone)]
pub struct LineEnds {
    /// The last chunk ended with a CR: a LF first in the next one belongs to it.
    after_cr: bool,
}

impl LineEnds {
    /// Calls `line` with each line that `buf` completes, without its terminator, and returns
    /// where the unfinished rest of `buf` begins. `buf[..from]` is what an earlier call left
    /// unfinished (it holds no line end), so the search starts at `from`: linear in the bytes
    /// however the stream is cut.
    pub fn split<'b>(
        &mut self,
        buf: &'b [u8],
        from: usize,
        mut line: impl FnMut(&'b [u8]),
    ) -> usize {
        let mut start = 0;
        let mut at = from;
        if self.after_cr && from == 0 && buf.first() == Some(&b'\n') {
            start = 1;
            at = 1;
        }
        if buf.len() > from {
            self.after_cr = false;
        }
        while let Some(offset) = buf
            .get(at..)
            .and_then(|rest| rest.iter().position(|b| *b == b'\n' || *b == b'\r'))
        {
            let end = at + offset;
            line(buf.get(start..end).unwrap_or_default());
            let crlf = buf.get(end) == Some(&b'\r') && buf.get(end + 1) == Some(&b'\n');
            start = end + if crlf { 2 } else { 1 };
            at = start;
            if buf.get(end) == Some(&b'\r') && end + 1 == buf.len() {
                self.after_cr = true;
            }
        }
        start
    }
}

/// One server-sent event.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SseEvent {
    /// The `event:` field (`message` when absent).
    pub name: String,
    /// The `data:` lines joined with newlines.
    pub data: String,
}

/// An incremental event-stream parser that holds at most `max` bytes of one event.
#[derive(Debug)]
pub struct SseParser {
    /// Past the stream's first bytes, where a byte order mark may be.
    started: bool,
    ends: LineEnds,
    buffer: Vec<u8>,
    name: String,
    data: String,
    max: usize,
}

impl SseParser {
    /// A parser that refuses an event (or an unfinished line) longer than `max` bytes.
    pub fn new(max: usize) -> SseParser {
        SseParser {
            started: false,
            ends: LineEnds::default(),
            buffer: Vec::new(),
            name: String::new(),
            data: String::new(),
            max,
        }
    }

    /// Feeds bytes; the events they complete, or an error once an event outgrows the bound.
    pub fn push(&mut self, bytes: &[u8]) -> Result<Vec<SseEvent>, String> {
        let mut buffer = std::mem::take(&mut self.buffer);
        let mut from = buffer.len();
        buffer.extend_from_slice(bytes);
        if !self.started {
            if buffer.len() < BOM.len() && BOM.starts_with(&buffer) {
                // Perhaps the start of a byte order mark: wait for the rest.
                self.buffer = buffer;
                return Ok(Vec::new());
            }
            self.started = true;
            if buffer.starts_with(BOM) {
                buffer.drain(..BOM.len());
            }
            from = 0;
        }
        let mut events = Vec::new();
        let rest = self.ends.split(&buffer, from, |line| {
            field(&mut self.name, &mut self.data, &mut events, line);
        });
        buffer.drain(..rest);
        self.buffer = buffer;
        if self.buffer.len() + self.data.len() > self.max {
            return Err("event too large".into());
        }
        Ok(events)
    }
}

/// Reads one line into the event being built (`name`, `data`), dispatching it to `events` at
/// an empty line.
fn field(name: &mut String, data: &mut String, events: &mut Vec<SseEvent>, line: &[u8]) {
    let line = String::from_utf8_lossy(line);
    if line.is_empty() {
        let name = std::mem::take(name);
        if !data.is_empty() {
            events.push(SseEvent {
                name: if name.is_empty() {
                    "message".into()
                } else {
                    name
                },
                data: std::mem::take(data),
            });
        }
        return;
    }
    if line.starts_with(':') {
        return;
    }
    let (field, value) = line.split_once(':').unwrap_or((&line, ""));
    let value = value.strip_prefix(' ').unwrap_or(value);
    match field {
        "event" => *name = value.to_owned(),
        "data" => {
            if !data.is_empty() {
                data.push('\n');
            }
            data.push_str(value);
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The lines of `chunks`, fed one after the other.
    fn lines(chunks: &[&[u8]]) -> Vec<String> {
        let mut ends = LineEnds::default();
        let mut buffer = Vec::new();
        let mut out = Vec::new();
        for chunk in chunks {
            let from = buffer.len();
            buffer.extend_from_slice(chunk);
            let rest = ends.split(&buffer, from, |l| {
                out.push(String::from_utf8_lossy(l).into_owned());
            });
            buffer.drain(..rest);
        }
        out
    }

    #[test]
    fn lines_end_at_crlf_lf_and_a_lone_cr() {
        assert_eq!(lines(&[b"a\r\nb\nc\rd\r\re"]), ["a", "b", "c", "d", ""]);
    }

    #[test]
    fn a_crlf_cut_between_chunks_is_one_line_end() {
        assert_eq!(lines(&[b"a\r", b"\nb\n"]), ["a", "b"]);
        assert_eq!(lines(&[b"a\r", b"", b"\nb\n"]), ["a", "b"]);
        // A CR that ends a chunk in the middle of a buffered line still ends that line.
        assert_eq!(lines(&[b"a", b"b\r", b"\n\n"]), ["ab", ""]);
        // A LF after a CR that did not end the last chunk is a line end of its own.
        assert_eq!(lines(&[b"a\rb", b"\n"]), ["a", "b"]);
    }

    #[test]
    fn events_split_across_chunks_are_reassembled() {
        let mut parser = SseParser::new(1024);
        assert!(
            parser
                .push(b": keep-alive\n\nevent: snap")
                .unwrap()
                .is_empty()
        );
        let events = parser
            .push(b"shot\nid: 4\ndata: {\"seq\":4,\ndata: \"events\":[]}\r\n\r\ndata: x\n\n")
            .unwrap();
        assert_eq!(
            events,
            vec![
                SseEvent {
                    name: "snapshot".into(),
                    data: "{\"seq\":4,\n\"events\":[]}".into()
                },
                SseEvent {
                    name: "message".into(),
                    data: "x".into()
                }
            ]
        );
    }

    #[test]
    fn events_with_lone_cr_line_ends_are_the_same_events() {
        let lf = SseParser::new(1024)
            .push(b"event: revocation\ndata: a\ndata: b\n\n")
            .unwrap();
        let cr = SseParser::new(1024)
            .push(b"event: revocation\rdata: a\rdata: b\r\r")
            .unwrap();
        let mut cut = SseParser::new(1024);
        let mut pieces = cut.push(b"event: revocation\r\ndata: a\r").unwrap();
        pieces.extend(cut.push(b"\ndata: b\r").unwrap());
        pieces.extend(cut.push(b"\n\r").unwrap());
        pieces.extend(cut.push(b"\n").unwrap());
        assert_eq!(lf.len(), 1);
        assert_eq!(lf[0].data, "a\nb");
        assert_eq!(cr, lf);
        assert_eq!(pieces, lf);
    }

    #[test]
    fn a_byte_order_mark_first_is_ignored_however_it_arrives() {
        let stream = b"\xEF\xBB\xBFdata: x\n\n";
        let whole = SseParser::new(64).push(stream).unwrap();
        assert_eq!(whole.len(), 1);
        assert_eq!(whole[0].data, "x");
        let mut bytewise = SseParser::new(64);
        let mut events = Vec::new();
        for byte in stream {
            events.extend(bytewise.push(std::slice::from_ref(byte)).unwrap());
        }
        assert_eq!(events, whole);
        // Only first: later, the same bytes are part of a line.
        let later = SseParser::new(64)
            .push(b"data: x\n\n\xEF\xBB\xBFdata: y\n\n")
            .unwrap();
        assert_eq!(later.len(), 1);
    }

    #[test]
    fn an_endless_line_is_refused() {
        let mut parser = SseParser::new(64);
        assert!(parser.push(&[b'a'; 65]).is_err());
    }
}
