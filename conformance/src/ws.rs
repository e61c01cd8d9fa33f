//! The WebSocket case: a handshake through the gateway to the echo backend's `/ws`, then each
//! expected message sent masked and read back verbatim.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// One message to send and expect back: `(opcode, payload)`.
type Message = (u8, Vec<u8>);

/// Messages named by the vector's `websocket_echo` lines (`text frame "…"`,
/// `binary frame [1,2,…]`).
pub fn messages(expect: &[&str]) -> Result<Vec<Message>, String> {
    expect
        .iter()
        .map(|line| {
            if let Some(rest) = line.strip_prefix("text frame \"") {
                let text = rest.rsplit_once('"').map(|(t, _)| t).ok_or("unterminated text")?;
                Ok((1, text.as_bytes().to_vec()))
            } else if let Some(rest) = line.strip_prefix("binary frame [") {
                let list = rest.split_once(']').map(|(l, _)| l).ok_or("unterminated list")?;
                let bytes: Result<Vec<u8>, _> =
                    list.split(',').map(|b| b.trim().parse::<u8>()).collect();
                Ok((2, bytes.map_err(|e| format!("{line:?}: {e}"))?))
            } else {
                Err(format!("the runner cannot check websocket expectation {line:?}"))
            }
        })
        .collect()
}

/// Opens `path` on `addr` as a WebSocket and checks each message comes back unchanged.
pub fn check(addr: SocketAddr, host: &str, path: &str, msgs: &[Message]) -> Result<(), String> {
    let timeout = Duration::from_secs(5);
    let mut s = TcpStream::connect_timeout(&addr, timeout).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(timeout)).map_err(|e| e.to_string())?;
    let key = "c2x1aWNlIGNvbmZvcm1hbmNl";
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    s.write_all(req.as_bytes()).map_err(|e| e.to_string())?;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut byte).map_err(|e| format!("handshake: {e}"))?;
        head.push(byte[0]);
        if head.len() > 16 * 1024 {
            return Err("handshake response too large".into());
        }
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    if !head.starts_with("HTTP/1.1 101") {
        return Err(format!(
            "expected 101 Switching Protocols, got {:?}",
            head.lines().next().unwrap_or("")
        ));
    }
    let accept = echo::ws::accept_key(key);
    if !head.lines().any(|l| {
        l.split_once(':').is_some_and(|(n, v)| {
            n.trim().eq_ignore_ascii_case("sec-websocket-accept") && v.trim() == accept
        })
    }) {
        return Err("the 101 lacks the backend's Sec-WebSocket-Accept".into());
    }
    for (opcode, payload) in msgs {
        let mask = [0x5a, 0x17, 0xc3, 0x08];
        let mut frame = vec![0x80 | opcode];
        match payload.len() {
            n if n < 126 => frame.push(0x80 | n as u8),
            n => {
                frame.push(0x80 | 126);
                frame.extend_from_slice(&(n as u16).to_be_bytes());
            }
        }
        frame.extend_from_slice(&mask);
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        s.write_all(&frame).map_err(|e| e.to_string())?;
        let mut h = [0u8; 2];
        s.read_exact(&mut h).map_err(|e| format!("reading the echo: {e}"))?;
        let len = match h[1] & 0x7f {
            126 => {
                let mut b = [0u8; 2];
                s.read_exact(&mut b).map_err(|e| e.to_string())?;
                usize::from(u16::from_be_bytes(b))
            }
            n => usize::from(n),
        };
        let mut got = vec![0u8; len];
        s.read_exact(&mut got).map_err(|e| e.to_string())?;
        if h[0] & 0x0f != *opcode || &got != payload {
            return Err(format!(
                "expected opcode {opcode} payload {payload:?} back, got opcode {} payload {got:?}",
                h[0] & 0x0f
            ));
        }
    }
    let _ = s.write_all(&[0x88, 0x80, 0, 0, 0, 0]);
    Ok(())
}
