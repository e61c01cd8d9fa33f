//! The conformance gRPC service's messages (`gateway_api_conformance.echo_basic.grpcecho`, the
//! upstream echo-basic's `grpcecho.proto`) in protobuf wire format, and gRPC's message framing
//! (a compressed flag and a 4-byte length before each message).
//!
//! Hand-written: the service has three string-and-message types, and the runner needs to read
//! what the echo writes; a code generator (and protoc on every machine) would cost more than
//! these hundred lines.

/// The service's full name.
pub const SERVICE: &str = "gateway_api_conformance.echo_basic.grpcecho.GrpcEcho";

/// The methods the echo answers (`EchoThree` is unimplemented on purpose, as upstream).
pub const IMPLEMENTED: &[&str] = &["Echo", "EchoTwo"];

/// A streaming method of the echo's own (not the conformance service's): the answer's head
/// waits for the first request message, then every DATA chunk is sent back as it arrives and
/// the call ends OK when the request does. Tests use it for streaming calls in lock step (a
/// proxy that buffered either direction would stall them) and for `grpc-timeout` (a call that
/// sends no message gets no answer from the backend).
pub const STREAM_METHOD: &str = "/sluice.echo.Stream/Echo";

/// What an `EchoResponse` asserts (field numbers from `grpcecho.proto`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Assertions {
    /// 1: `/service/method` of the call.
    pub fully_qualified_method: String,
    /// 2: the request's headers (metadata), name and value.
    pub headers: Vec<(String, String)>,
    /// 3: the `:authority` the backend saw.
    pub authority: String,
    /// 4: `Context`: namespace (1), ingress (2), service_name (3), pod (4).
    pub namespace: String,
    /// See `namespace`.
    pub ingress: String,
    /// See `namespace`.
    pub service_name: String,
    /// See `namespace`.
    pub pod: String,
}

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// A length-delimited field (wire type 2).
fn bytes_field(out: &mut Vec<u8>, number: u64, bytes: &[u8]) {
    varint(out, number << 3 | 2);
    varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// A string field, left out when empty (proto3 default).
fn string_field(out: &mut Vec<u8>, number: u64, s: &str) {
    if !s.is_empty() {
        bytes_field(out, number, s.as_bytes());
    }
}

/// `EchoResponse { assertions = 1; request = 2 (empty EchoRequest) }`.
pub fn encode_response(a: &Assertions) -> Vec<u8> {
    let mut assertions = Vec::new();
    string_field(&mut assertions, 1, &a.fully_qualified_method);
    for (k, v) in &a.headers {
        let mut header = Vec::new();
        string_field(&mut header, 1, k);
        string_field(&mut header, 2, v);
        bytes_field(&mut assertions, 2, &header);
    }
    string_field(&mut assertions, 3, &a.authority);
    let mut context = Vec::new();
    string_field(&mut context, 1, &a.namespace);
    string_field(&mut context, 2, &a.ingress);
    string_field(&mut context, 3, &a.service_name);
    string_field(&mut context, 4, &a.pod);
    bytes_field(&mut assertions, 4, &context);
    let mut out = Vec::new();
    bytes_field(&mut out, 1, &assertions);
    bytes_field(&mut out, 2, &[]);
    out
}

/// Reads protobuf fields: (number, wire type, value bytes for length-delimited ones).
fn fields(mut buf: &[u8]) -> Result<Vec<(u64, &[u8])>, String> {
    fn read_varint(buf: &mut &[u8]) -> Result<u64, String> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let (&b, rest) = buf.split_first().ok_or("truncated varint")?;
            *buf = rest;
            v |= u64::from(b & 0x7f) << shift;
            if b < 0x80 {
                return Ok(v);
            }
        }
        Err("varint too long".into())
    }
    let mut out = Vec::new();
    while !buf.is_empty() {
        let key = read_varint(&mut buf)?;
        match key & 7 {
            0 => drop(read_varint(&mut buf)?),
            2 => {
                let len = usize::try_from(read_varint(&mut buf)?).map_err(|e| e.to_string())?;
                if len > buf.len() {
                    return Err("truncated field".into());
                }
                let (value, rest) = buf.split_at(len);
                out.push((key >> 3, value));
                buf = rest;
            }
            1 => buf = buf.get(8..).ok_or("truncated fixed64")?,
            5 => buf = buf.get(4..).ok_or("truncated fixed32")?,
            t => return Err(format!("wire type {t}")),
        }
    }
    Ok(out)
}

fn text(b: &[u8]) -> Result<String, String> {
    String::from_utf8(b.to_vec()).map_err(|e| e.to_string())
}

/// Reads an `EchoResponse`'s assertions.
pub fn decode_response(buf: &[u8]) -> Result<Assertions, String> {
    let mut a = Assertions::default();
    for (n, v) in fields(buf)? {
        if n != 1 {
            continue;
        }
        for (n, v) in fields(v)? {
            match n {
                1 => a.fully_qualified_method = text(v)?,
                2 => {
                    let (mut k, mut val) = (String::new(), String::new());
                    for (n, v) in fields(v)? {
                        match n {
                            1 => k = text(v)?,
                            2 => val = text(v)?,
                            _ => {}
                        }
                    }
                    a.headers.push((k, val));
                }
                3 => a.authority = text(v)?,
                4 => {
                    for (n, v) in fields(v)? {
                        match n {
                            1 => a.namespace = text(v)?,
                            2 => a.ingress = text(v)?,
                            3 => a.service_name = text(v)?,
                            4 => a.pod = text(v)?,
                            _ => {}
                        }
                    }
                }
                _ => {}
            }
        }
    }
    Ok(a)
}

/// One gRPC length-prefixed message (uncompressed).
pub fn frame(message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(5 + message.len());
    out.push(0);
    out.extend_from_slice(&(message.len() as u32).to_be_bytes());
    out.extend_from_slice(message);
    out
}

/// The first message of a gRPC body: `None` while incomplete, an error when compressed.
pub fn unframe(body: &[u8]) -> Result<Option<&[u8]>, String> {
    let Some(head) = body.get(..5) else { return Ok(None) };
    if head[0] != 0 {
        return Err("compressed gRPC message".into());
    }
    let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
    Ok(body.get(5..5 + len))
}

/// gRPC status names (the runner's vectors use them) by code.
pub fn code_name(code: u32) -> &'static str {
    const NAMES: [&str; 17] = [
        "OK",
        "Canceled",
        "Unknown",
        "InvalidArgument",
        "DeadlineExceeded",
        "NotFound",
        "AlreadyExists",
        "PermissionDenied",
        "ResourceExhausted",
        "FailedPrecondition",
        "Aborted",
        "OutOfRange",
        "Unimplemented",
        "Internal",
        "Unavailable",
        "DataLoss",
        "Unauthenticated",
    ];
    NAMES.get(code as usize).copied().unwrap_or("Unknown")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "test code")]

    use super::*;

    #[test]
    fn a_response_reads_back() {
        let a = Assertions {
            fully_qualified_method: format!("/{SERVICE}/Echo"),
            headers: vec![(":authority".into(), "x".into()), ("k".into(), "v".into())],
            authority: "x".into(),
            namespace: "ns".into(),
            ingress: String::new(),
            service_name: "svc".into(),
            pod: "pod-1".into(),
        };
        let framed = frame(&encode_response(&a));
        let message = unframe(&framed).unwrap().unwrap();
        assert_eq!(decode_response(message).unwrap(), a);
        assert_eq!(unframe(&framed[..framed.len() - 1]).unwrap(), None);
        assert!(decode_response(&[0x0a, 0x05, 1]).is_err());
        assert_eq!(code_name(12), "Unimplemented");
    }
}
