//! Header edits (RequestHeaderModifier) applied to arbitrary accepted requests: whatever the
//! request and the edits (names tokens, values without CR/LF/NUL, as config-sync and `view`
//! guarantee), the upstream head lb writes is one well-formed request with unchanged framing.

#![no_main]

use libfuzzer_sys::fuzz_target;
use table::format::{ArchivedHeaderEdits, HeaderEdits, HeaderField};

/// Splits `data` into a request and up to a few edits; returns None when too short.
fn edits_from(spec: &[u8]) -> HeaderEdits {
    let mut e = HeaderEdits::default();
    for (i, part) in spec.split(|&b| b == b'\n').take(6).enumerate() {
        let (name, value) = match part.iter().position(|&b| b == b'=') {
            Some(p) => (&part[..p], &part[p + 1..]),
            None => (part, &b""[..]),
        };
        let name: String = name
            .iter()
            .filter(|b| b.is_ascii_alphanumeric() || **b == b'-')
            .map(|&b| b as char)
            .collect();
        // What config-sync and the table's `view` let through: tokens lb does not own.
        if name.is_empty() || !table::wire::is_editable(&name) {
            continue;
        }
        let value: String = value
            .iter()
            .filter(|&&b| b == b'\t' || (0x20..0x7f).contains(&b))
            .map(|&b| b as char)
            .collect();
        let field = HeaderField { name: name.clone(), value: value.trim().to_owned() };
        match i % 3 {
            0 => e.set.push(field),
            1 => e.add.push(field),
            _ => e.remove.push(name),
        }
    }
    e
}

fuzz_target!(|data: &[u8]| {
    let split = data.iter().position(|&b| b == 0).unwrap_or(data.len());
    let (spec, request) = (&data[..split], data.get(split + 1..).unwrap_or(&[]));
    let edits = edits_from(spec);
    let Ok(bytes) = rkyv::to_bytes::<rkyv::rancor::Error>(&edits) else { return };
    let Ok(archived) = rkyv::access::<ArchivedHeaderEdits, rkyv::rancor::Error>(&bytes) else {
        return;
    };
    lb_fuzz::request_roundtrip(request, &[Some(archived)]);
});
