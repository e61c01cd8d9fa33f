//! Message bodies: an incremental decoder for each framing (Content-Length, chunked,
//! close-delimited) that re-frames as it goes, so framing is always regenerated and never
//! copied through (chunk sizes and extensions of the sender never reach the peer).
//!
//! The chunked decoder is strict (RFC 9112 7.1): hex sizes without prefix or sign, BWS only
//! before `;`, a capped extension, CRLF after every size and every chunk's data. Trailer
//! fields (gRPC's status lives there) are checked line by line, kept (16 KiB at most) and
//! passed on after the last chunk, except those no trailer may carry (RFC 9110 §6.5.1:
//! framing, routing, authentication, content metadata, hop-by-hop; [`forwardable_trailer`]).
//! It takes input in arbitrary splits; incomplete input is a state, not an error.

/// What the decoder writes for the peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encode {
    /// Data as is (the peer knows the length, or the body ends with the connection).
    Raw,
    /// Chunked, with our own chunk sizes and a bare last chunk.
    Chunked,
}

/// A body framing error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyError {
    /// Malformed chunked framing.
    Chunked(&'static str),
    /// Body larger than allowed.
    TooLarge,
}

/// Decodes one body and appends the re-framed bytes to an output buffer.
#[derive(Debug)]
pub struct BodyDecoder {
    kind: Kind,
    encode: Encode,
    total: u64,
    max: u64,
    finished: bool,
}

#[derive(Debug)]
enum Kind {
    Length(u64),
    Chunked(Chunked),
    UntilClose,
}

impl BodyDecoder {
    /// A body of exactly `n` bytes.
    pub fn length(n: u64, encode: Encode) -> BodyDecoder {
        BodyDecoder { kind: Kind::Length(n), encode, total: 0, max: u64::MAX, finished: n == 0 }
            .finish_if_empty()
    }

    /// A chunked body of at most `max` decoded bytes, with extensions capped at `max_ext`.
    pub fn chunked(encode: Encode, max: u64, max_ext: usize) -> BodyDecoder {
        BodyDecoder {
            kind: Kind::Chunked(Chunked::new(max_ext)),
            encode,
            total: 0,
            max,
            finished: false,
        }
    }

    /// A body that ends when the connection closes.
    pub fn until_close(encode: Encode) -> BodyDecoder {
        BodyDecoder { kind: Kind::UntilClose, encode, total: 0, max: u64::MAX, finished: false }
    }

    /// No body at all.
    pub fn none() -> BodyDecoder {
        BodyDecoder::length(0, Encode::Raw)
    }

    fn finish_if_empty(mut self) -> Self {
        if self.finished && self.encode == Encode::Chunked {
            self.finished = false;
            self.kind = Kind::Length(0);
        }
        self
    }

    /// The whole body has been decoded (and, when chunked output, the last chunk written).
    pub fn is_done(&self) -> bool {
        self.finished
    }

    /// The body ends with the connection.
    pub fn until_eof(&self) -> bool {
        matches!(self.kind, Kind::UntilClose)
    }

    /// Decoded bytes so far.
    pub fn decoded(&self) -> u64 {
        self.total
    }

    /// Consumes body bytes from `input`, appends the re-framed output to `out`, and returns
    /// how many input bytes were used. Bytes after the end of the body are left unconsumed.
    pub fn decode(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<usize, BodyError> {
        let mut used = 0;
        while !self.finished {
            let rest = &input[used..];
            let (n, data) = match &mut self.kind {
                Kind::Length(remaining) => {
                    let take = (*remaining).min(rest.len() as u64) as usize;
                    *remaining -= take as u64;
                    (take, 0..take)
                }
                Kind::UntilClose => (rest.len(), 0..rest.len()),
                Kind::Chunked(c) => c.feed(rest)?,
            };
            if !data.is_empty() {
                self.total += data.len() as u64;
                if self.total > self.max {
                    return Err(BodyError::TooLarge);
                }
                self.emit(&rest[data], out);
            }
            used += n;
            let at_end = match &self.kind {
                Kind::Length(0) => true,
                Kind::Chunked(c) => c.done(),
                _ => false,
            };
            if at_end {
                self.finish(out);
            } else if n == 0 || used == input.len() {
                break;
            }
        }
        Ok(used)
    }

    /// The connection closed: completes a close-delimited body. Returns `false` when the body
    /// was cut short instead.
    pub fn eof(&mut self, out: &mut Vec<u8>) -> bool {
        if self.finished {
            return true;
        }
        if matches!(self.kind, Kind::UntilClose) {
            self.finish(out);
            return true;
        }
        false
    }

    fn emit(&self, data: &[u8], out: &mut Vec<u8>) {
        if self.encode == Encode::Chunked {
            push_hex(out, data.len());
            out.extend_from_slice(b"\r\n");
            out.extend_from_slice(data);
            out.extend_from_slice(b"\r\n");
        } else {
            out.extend_from_slice(data);
        }
    }

    fn finish(&mut self, out: &mut Vec<u8>) {
        if self.encode == Encode::Chunked {
            out.extend_from_slice(b"0\r\n");
            for (name, value) in self.trailers() {
                crate::http1::field(out, name, value);
            }
            out.extend_from_slice(b"\r\n");
        }
        self.finished = true;
    }

    /// The trailer fields received that may be passed on (empty before the body's end, and
    /// for bodies that are not chunked): name and value, the value without surrounding
    /// whitespace.
    pub fn trailers(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        let raw: &[u8] = match &self.kind {
            Kind::Chunked(c) => &c.trailers,
            _ => &[],
        };
        raw.split(|&b| b == b'\n').filter_map(|line| {
            let line = line.strip_suffix(b"\r")?;
            let colon = line.iter().position(|&b| b == b':')?;
            let (name, value) = (&line[..colon], crate::http1::parse::trim_ows(&line[colon + 1..]));
            forwardable_trailer(name).then_some((name, value))
        })
    }
}

/// Whether a trailer field may be passed on: not one that frames, routes, authenticates,
/// describes the content, controls caching or the connection (RFC 9110 §6.5.1), which a
/// recipient merging trailers into the head would misread.
pub fn forwardable_trailer(name: &[u8]) -> bool {
    const NEVER: &[&[u8]] = &[
        b"transfer-encoding",
        b"content-length",
        b"host",
        b"trailer",
        b"te",
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"upgrade",
        b"content-encoding",
        b"content-type",
        b"content-range",
        b"authorization",
        b"proxy-authorization",
        b"proxy-authenticate",
        b"www-authenticate",
        b"cookie",
        b"set-cookie",
        b"cache-control",
        b"expires",
        b"age",
        b"location",
        b"retry-after",
        b"vary",
        b"expect",
        b"max-forwards",
        b"range",
        b"if-match",
        b"if-none-match",
        b"if-modified-since",
        b"if-unmodified-since",
        b"if-range",
    ];
    !NEVER.iter().any(|n| n.eq_ignore_ascii_case(name))
}

pub(crate) fn push_hex(out: &mut Vec<u8>, mut n: usize) {
    let mut digits = [0u8; 16];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b"0123456789abcdef"[n & 0xf];
        n >>= 4;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

/// Largest chunk size accepted (2^56 − 1): keeps the arithmetic far from overflow.
const MAX_CHUNK_SIZE: u64 = (1 << 56) - 1;
/// Largest trailer section, bytes, counted as lb writes it on (`name: value` per field, CRLFs
/// not counted), so that what lb passes on is never refused under the same limit.
const MAX_TRAILERS: usize = 16 * 1024;

#[derive(Debug)]
struct Chunked {
    state: State,
    ext_len: usize,
    max_ext: usize,
    trailer_len: usize,
    /// The trailer section's field lines as received, less the whitespace after each colon
    /// (each ends with CRLF); no allocation for a body without trailers.
    trailers: Vec<u8>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    SizeStart,
    Size(u64),
    SizeBws(u64),
    Ext(u64),
    SizeLf(u64),
    Data(u64),
    DataCr,
    DataLf,
    TrailerLineStart,
    /// In a trailer field's name (a token).
    TrailerName,
    /// After a trailer field's colon, in whitespace (dropped; lb writes one SP, counted with
    /// the colon); `true` once one byte of it was seen.
    TrailerOws(bool),
    /// In a trailer field's value.
    TrailerLine,
    TrailerLf,
    EndLf,
    Done,
}

impl Chunked {
    fn new(max_ext: usize) -> Chunked {
        Chunked {
            state: State::SizeStart,
            ext_len: 0,
            max_ext,
            trailer_len: 0,
            trailers: Vec::new(),
        }
    }

    fn done(&self) -> bool {
        self.state == State::Done
    }

    /// Advances over `input`; returns bytes consumed and the range of chunk data among them
    /// (at most one data run per call).
    fn feed(&mut self, input: &[u8]) -> Result<(usize, std::ops::Range<usize>), BodyError> {
        let bad = BodyError::Chunked;
        let mut i = 0;
        while i < input.len() {
            let b = input[i];
            self.state = match self.state {
                State::SizeStart => match hex(b) {
                    Some(d) => State::Size(u64::from(d)),
                    None => return Err(bad("chunk size")),
                },
                State::Size(n) => match (hex(b), b) {
                    (Some(d), _) => {
                        let n = (n << 4) | u64::from(d);
                        if n > MAX_CHUNK_SIZE {
                            return Err(bad("chunk size too large"));
                        }
                        State::Size(n)
                    }
                    (None, b';') => {
                        self.ext_len = 0;
                        State::Ext(n)
                    }
                    (None, b' ' | b'\t') => State::SizeBws(n),
                    (None, b'\r') => State::SizeLf(n),
                    _ => return Err(bad("chunk size")),
                },
                // Whitespace after the size is only BWS before an extension.
                State::SizeBws(n) => match b {
                    b' ' | b'\t' => State::SizeBws(n),
                    b';' => {
                        self.ext_len = 0;
                        State::Ext(n)
                    }
                    _ => return Err(bad("whitespace after chunk size")),
                },
                State::Ext(n) => {
                    self.ext_len += 1;
                    if self.ext_len > self.max_ext {
                        return Err(bad("chunk extension too long"));
                    }
                    match b {
                        b'\r' => State::SizeLf(n),
                        b'\n' => return Err(bad("bare LF in chunk extension")),
                        b'\t' | 0x20..=0x7e | 0x80..=0xff => State::Ext(n),
                        _ => return Err(bad("control byte in chunk extension")),
                    }
                }
                State::SizeLf(n) => match b {
                    b'\n' if n == 0 => State::TrailerLineStart,
                    b'\n' => State::Data(n),
                    _ => return Err(bad("CR without LF after chunk size")),
                },
                State::Data(n) => {
                    let take = n.min((input.len() - i) as u64) as usize;
                    let left = n - take as u64;
                    self.state = if left == 0 { State::DataCr } else { State::Data(left) };
                    return Ok((i + take, i..i + take));
                }
                State::DataCr => match b {
                    b'\r' => State::DataLf,
                    _ => return Err(bad("chunk data longer than its size")),
                },
                State::DataLf => match b {
                    b'\n' => State::SizeStart,
                    _ => return Err(bad("CR without LF after chunk data")),
                },
                // A trailer section is field lines (RFC 9112 §7.1.2, §5): a token name, a
                // colon with no whitespace before it, a value of VCHAR, obs-text, SP and HTAB.
                // No folding, no empty name. Kept for `trailers()`.
                State::TrailerLineStart => match b {
                    b'\r' => State::EndLf,
                    b'\n' => return Err(bad("bare LF in trailers")),
                    b' ' | b'\t' => return Err(bad("obsolete line folding in trailers")),
                    b':' => return Err(bad("empty trailer field name")),
                    _ if crate::http1::parse::is_tchar(b) => {
                        self.trailer_byte(b, State::TrailerName)?
                    }
                    _ => return Err(bad("trailer field name")),
                },
                State::TrailerName => match b {
                    b':' => {
                        self.trailer_len += 1; // the SP lb writes after it
                        self.trailer_byte(b, State::TrailerOws(false))?
                    }
                    _ if crate::http1::parse::is_tchar(b) => {
                        self.trailer_byte(b, State::TrailerName)?
                    }
                    b'\r' | b'\n' => return Err(bad("trailer field without a colon")),
                    _ => return Err(bad("trailer field name")),
                },
                State::TrailerOws(seen) if matches!(b, b' ' | b'\t') => {
                    if seen {
                        self.count_trailer(1)?;
                    }
                    State::TrailerOws(true)
                }
                State::TrailerLine | State::TrailerOws(_) => match b {
                    b'\r' => {
                        self.trailers.push(b'\r');
                        State::TrailerLf
                    }
                    b'\n' => return Err(bad("bare LF in trailers")),
                    _ => self.trailer_byte(b, State::TrailerLine)?,
                },
                State::TrailerLf => match b {
                    b'\n' => {
                        self.trailers.push(b'\n');
                        State::TrailerLineStart
                    }
                    _ => return Err(bad("CR without LF in trailers")),
                },
                State::EndLf => match b {
                    b'\n' => {
                        self.state = State::Done;
                        return Ok((i + 1, 0..0));
                    }
                    _ => return Err(bad("CR without LF after last chunk")),
                },
                State::Done => return Ok((i, 0..0)),
            };
            i += 1;
        }
        Ok((i, 0..0))
    }

    fn count_trailer(&mut self, n: usize) -> Result<(), BodyError> {
        self.trailer_len += n;
        if self.trailer_len > MAX_TRAILERS {
            return Err(BodyError::Chunked("trailers too long"));
        }
        Ok(())
    }

    fn trailer_byte(&mut self, b: u8, next: State) -> Result<State, BodyError> {
        self.count_trailer(1)?;
        if b < 0x20 && b != b'\t' || b == 0x7f {
            return Err(BodyError::Chunked("control byte in trailers"));
        }
        self.trailers.push(b);
        Ok(next)
    }
}

/// The value of one hex digit.
pub(crate) fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dechunk(input: &[u8], split: usize) -> Result<(Vec<u8>, usize, bool), BodyError> {
        let mut d = BodyDecoder::chunked(Encode::Raw, 1 << 20, 4096);
        let mut out = Vec::new();
        let mut used = 0;
        for piece in input.chunks(split.max(1)) {
            let mut at = 0;
            while at < piece.len() && !d.is_done() {
                let n = d.decode(&piece[at..], &mut out)?;
                at += n;
                used += n;
                if n == 0 {
                    break;
                }
            }
            if d.is_done() {
                break;
            }
        }
        Ok((out, used, d.is_done()))
    }

    #[test]
    fn valid_chunked_bodies_any_split() {
        let body = b"5\r\nhello\r\n6;a=b\r\n world\r\n000\r\nX-T: 1\r\n\r\nNEXT";
        for split in 1..body.len() {
            let (out, used, done) = dechunk(body, split).unwrap();
            assert_eq!(out, b"hello world", "split {split}");
            assert!(done);
            assert_eq!(&body[used..], b"NEXT", "split {split}");
        }
        assert_eq!(dechunk(b"5 ;a\r\nhello\r\n0\r\n\r\n", 64).unwrap().0, b"hello");
    }

    #[test]
    fn trailers_pass_on_except_those_no_trailer_may_carry() {
        let body = b"3\r\nabc\r\n0\r\ngrpc-status: 0\r\nContent-Length: 99\r\nX-Sum:  ab c \r\nSet-Cookie: s=1\r\n\r\nNEXT";
        for split in 1..body.len() {
            let mut d = BodyDecoder::chunked(Encode::Chunked, u64::MAX, 64);
            let (mut out, mut used) = (Vec::new(), 0);
            for piece in body.chunks(split) {
                let end = used + piece.len();
                used += d.decode(&body[used..end], &mut out).unwrap();
            }
            assert!(d.is_done(), "split {split}");
            // Our own chunk sizes (they follow the input's splits), then the kept trailers.
            let out = String::from_utf8(out).unwrap();
            assert!(out.ends_with("\r\n0\r\ngrpc-status: 0\r\nX-Sum: ab c\r\n\r\n"), "{out:?}");
            let fields: Vec<_> = d.trailers().collect();
            assert_eq!(
                fields,
                vec![(&b"grpc-status"[..], &b"0"[..]), (&b"X-Sum"[..], &b"ab c"[..])]
            );
        }
        // Without trailers: the bare last chunk, and nothing kept.
        let mut d = BodyDecoder::chunked(Encode::Chunked, u64::MAX, 64);
        let mut out = Vec::new();
        d.decode(b"1\r\na\r\n0\r\n\r\n", &mut out).unwrap();
        assert_eq!(out, b"1\r\na\r\n0\r\n\r\n");
        assert_eq!(d.trailers().count(), 0);
    }

    #[test]
    fn passed_on_trailers_fit_the_limit_they_were_read_under() {
        // lb writes `name: value`; a section read under the limit (no space after the
        // colons, or several) must still decode at the next hop under the same limit.
        for line in ["a:b\r\n", "a:   b\r\n", "a: b \r\n"] {
            let count = MAX_TRAILERS / (line.len() - 1);
            let body = format!("1\r\nx\r\n0\r\n{}\r\n", line.repeat(count));
            let mut d = BodyDecoder::chunked(Encode::Chunked, u64::MAX, 64);
            let mut out = Vec::new();
            assert_eq!(d.decode(body.as_bytes(), &mut out).unwrap(), body.len(), "{line:?}");
            let mut again = BodyDecoder::chunked(Encode::Chunked, u64::MAX, 64);
            let mut twice = Vec::new();
            assert_eq!(again.decode(&out, &mut twice).unwrap(), out.len(), "{line:?}");
            assert!(again.is_done());
            assert_eq!(again.trailers().count(), count);
        }
        // One byte over the limit is refused whatever the spacing.
        let body = format!("0\r\n{}\r\n", "a:b\r\n".repeat(MAX_TRAILERS / 4 + 1));
        let mut d = BodyDecoder::chunked(Encode::Chunked, u64::MAX, 64);
        assert!(d.decode(body.as_bytes(), &mut Vec::new()).is_err());
    }

    #[test]
    fn invalid_chunked_bodies() {
        for bad in [
            &b"0x5\r\nhello\r\n0\r\n\r\n"[..],
            b"5 \r\nhello\r\n0\r\n\r\n",
            b"-5\r\nhello\r\n0\r\n\r\n",
            b"Z\r\nZZ\r\n",
            b"3\r\nhello\r\n0\r\n\r\n",
            b"2\r\r;a\r\n02\r\n41\r\n0\r\n\r\n",
            b"5\nhello\r\n0\r\n\r\n",
            b"5\r\nhello\n0\r\n\r\n",
            b"5\r\nhello\r\n0\r\n\nX",
            b"fffffffffffffffffff\r\n",
        ] {
            assert!(dechunk(bad, 64).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
        let mut long = b"5;".to_vec();
        long.extend(std::iter::repeat_n(b'a', 5000));
        assert!(dechunk(&long, 64).is_err());
    }

    #[test]
    fn reencodes_as_chunked() {
        let mut d = BodyDecoder::length(5, Encode::Chunked);
        let mut out = Vec::new();
        assert_eq!(d.decode(b"hel", &mut out).unwrap(), 3);
        assert_eq!(d.decode(b"loGET", &mut out).unwrap(), 2);
        assert!(d.is_done());
        assert_eq!(out, b"3\r\nhel\r\n2\r\nlo\r\n0\r\n\r\n");
        let mut d = BodyDecoder::length(0, Encode::Chunked);
        let mut out = Vec::new();
        d.decode(b"", &mut out).unwrap();
        assert!(d.is_done());
        assert_eq!(out, b"0\r\n\r\n");
        let mut d = BodyDecoder::until_close(Encode::Chunked);
        let mut out = Vec::new();
        d.decode(b"abc", &mut out).unwrap();
        assert!(d.eof(&mut out));
        assert_eq!(out, b"3\r\nabc\r\n0\r\n\r\n");
    }

    #[test]
    fn limits_decoded_size() {
        let mut d = BodyDecoder::chunked(Encode::Raw, 4, 16);
        assert_eq!(d.decode(b"5\r\nhello\r\n", &mut Vec::new()), Err(BodyError::TooLarge));
    }
}
